from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from parley.engines.base import ImagePart, TextPart
from parley.errors import ClientError, ConfigError
from parley.store import (
    Database,
    PromptStore,
    PromptTemplate,
    PromptVariable,
    RenderedPrompt,
    load_template_file,
    render,
)

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "prompts" / "support.toml"
PNG = "data:image/png;base64,iVBORw0KGgo="


@pytest.fixture
def store(database: Database) -> PromptStore:
    return PromptStore(database)  # on SQLite and on PostgreSQL


def template(version: str = "1", instructions: str = "Hello {{name}}.") -> PromptTemplate:
    return PromptTemplate("pmpt_greet", version, instructions, (PromptVariable("name", "you"),))


# --- the store -------------------------------------------------------------------------------


def test_prompts_put_then_get_latest_and_by_version(store: PromptStore) -> None:
    first = store.put(template("1"))
    assert first.created_at is not None
    store.put(template("2", "Hi {{name}}!"))
    assert store.get("pmpt_greet").version == "2"
    assert store.get("pmpt_greet", "1") == first
    assert store.get("pmpt_greet", "2").instructions == "Hi {{name}}!"


def test_prompts_latest_is_numeric_when_versions_are_numbers(store: PromptStore) -> None:
    for version in ("2", "10", "9"):
        store.put(template(version))
    assert store.get("pmpt_greet").version == "10"
    assert [t.version for t in store.versions("pmpt_greet")] == ["2", "10", "9"]


def test_prompts_latest_is_newest_when_versions_are_not_numbers(store: PromptStore) -> None:
    for version in ("b", "a", "2"):
        store.put(template(version))
    assert store.get("pmpt_greet").version == "2"
    store.put(template("draft"))
    assert store.get("pmpt_greet").version == "draft"


def test_prompts_round_trip_keeps_variables_and_description(store: PromptStore) -> None:
    original = PromptTemplate(
        "pmpt_full",
        "1",
        "{{a}} {{b}} {{c}}",
        (
            PromptVariable("a"),
            PromptVariable("b", "text"),
            PromptVariable("c", ImagePart(PNG, "low")),
        ),
        description="all kinds",
    )
    stored = store.put(original)
    assert store.get("pmpt_full") == stored
    assert stored.same_content(original)


def test_prompts_list_gives_latest_of_each(store: PromptStore) -> None:
    store.put(template("1"))
    store.put(template("2"))
    store.put(PromptTemplate("pmpt_alpha", "7", "plain"))
    assert [(t.id, t.version) for t in store.list()] == [("pmpt_alpha", "7"), ("pmpt_greet", "2")]


def test_prompts_put_same_version_same_content_is_a_no_op(store: PromptStore) -> None:
    first = store.put(template("1"))
    again = store.put(template("1"))
    assert again == first
    assert len(store.versions("pmpt_greet")) == 1


def test_prompts_put_same_version_different_content_conflicts(store: PromptStore) -> None:
    store.put(template("1"))
    with pytest.raises(ClientError, match="version 1 exists") as info:
        store.put(template("1", "Goodbye {{name}}."))
    assert info.value.code == "prompt_version_exists"
    assert info.value.param == "prompt.version"
    assert store.get("pmpt_greet").instructions == "Hello {{name}}."


def test_prompts_delete_one_version_then_all(store: PromptStore) -> None:
    store.put(template("1"))
    store.put(template("2"))
    store.delete("pmpt_greet", "2")
    assert store.get("pmpt_greet").version == "1"
    store.delete("pmpt_greet")
    with pytest.raises(ClientError, match="unknown prompt"):
        store.get("pmpt_greet")
    assert store.list() == []


def test_prompts_unknown_id_or_version_is_invalid_prompt(store: PromptStore) -> None:
    store.put(template("1"))
    cases: list[tuple[Callable[[], object], str]] = [
        (lambda: store.get("pmpt_nope"), "prompt.id"),
        (lambda: store.get("pmpt_nope", "1"), "prompt.id"),
        (lambda: store.get("pmpt_greet", "3"), "prompt.version"),
        (lambda: store.versions("pmpt_nope"), "prompt.id"),
        (lambda: store.delete("pmpt_nope"), "prompt.id"),
        (lambda: store.delete("pmpt_greet", "3"), "prompt.version"),
    ]
    for call, param in cases:
        with pytest.raises(ClientError) as info:
            call()
        assert (info.value.code, info.value.param) == ("invalid_prompt", param)


@pytest.mark.parametrize("connections", [1, 2])
def test_prompts_concurrent_puts_of_one_version_store_it_once(
    database_url: str, connections: int
) -> None:
    databases = [Database(database_url) for _ in range(connections)]
    try:
        stores = [PromptStore(db) for db in databases]
        store = stores[0]
        results: list[PromptTemplate | BaseException] = []

        def put(instructions: str, i: int) -> None:
            try:
                results.append(stores[i % connections].put(template("1", instructions)))
            except ClientError as exc:
                results.append(exc)

        texts = ["Hello {{name}}.", "Bye {{name}}."] * 4
        threads = [threading.Thread(target=put, args=(t, i)) for i, t in enumerate(texts)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        winner = store.get("pmpt_greet", "1")
        stored = [r for r in results if isinstance(r, PromptTemplate)]
        assert all(r == winner for r in stored)
        assert len(stored) == 4 and len(results) == 8
        assert len(store.versions("pmpt_greet")) == 1
    finally:
        for db in databases:
            db.close()


# --- the template itself ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"id": "has space"}, "prompt.id"),
        ({"id": ""}, "prompt.id"),
        ({"id": "x" * 65}, "prompt.id"),
        ({"version": "1/2"}, "prompt.version"),
        ({"variables": (PromptVariable("1st"),)}, "prompt.variables"),
        ({"variables": (PromptVariable("a"), PromptVariable("a"))}, "prompt.variables"),
        ({"instructions": "Hi {{who}}", "variables": ()}, "prompt.variables"),
    ],
)
def test_prompts_template_validates_itself(kwargs: dict[str, object], param: str) -> None:
    fields: dict[str, object] = {"id": "pmpt_ok", "version": "1", "instructions": "hi"}
    fields.update(kwargs)
    with pytest.raises(ClientError) as info:
        PromptTemplate(**fields)  # type: ignore[arg-type]
    assert (info.value.code, info.value.param) == ("invalid_prompt", param)


def test_prompts_template_lists_placeholders_in_order() -> None:
    t = PromptTemplate("p", "1", "{{b}} {{ a }} {{b}}", (PromptVariable("a"), PromptVariable("b")))
    assert t.placeholders == ("b", "a")


# --- rendering -------------------------------------------------------------------------------


def test_prompts_render_text_variables_and_defaults() -> None:
    t = PromptTemplate(
        "p",
        "1",
        "I am {{ agent }} at {{company}}; {{company}} says hi.",
        (PromptVariable("company"), PromptVariable("agent", "Sam")),
    )
    assert render(t, {"company": "Acme"}) == RenderedPrompt("I am Sam at Acme; Acme says hi.")
    assert render(t, {"company": "Acme", "agent": "Ada"}).instructions.startswith("I am Ada")


def test_prompts_render_input_text_parts() -> None:
    t = PromptTemplate("p", "1", "<{{x}}|{{y}}>", (PromptVariable("x"), PromptVariable("y")))
    rendered = render(t, {"x": {"type": "input_text", "text": "one"}, "y": TextPart("two")})
    assert rendered.instructions == "<one|two>"


def test_prompts_render_image_parts_in_order_of_use() -> None:
    t = PromptTemplate(
        "p",
        "1",
        "Logo {{logo}}, badge {{badge}}, logo again {{logo}}.",
        (
            PromptVariable("badge"),
            PromptVariable("logo"),
            PromptVariable("extra", ImagePart("data:image/gif;base64,R0lG")),
        ),
    )
    rendered = render(
        t,
        {
            "badge": ImagePart("data:image/jpeg;base64,/9j/", "high"),
            "logo": {"type": "input_image", "image_url": PNG, "detail": "low"},
        },
    )
    assert rendered.instructions == (
        "Logo [image: logo], badge [image: badge], logo again [image: logo]."
    )
    assert rendered.images == (
        ImagePart(PNG, "low"),
        ImagePart("data:image/jpeg;base64,/9j/", "high"),
        ImagePart("data:image/gif;base64,R0lG"),  # declared, unused in the text: still attached
    )


def test_prompts_render_missing_variable_names_it() -> None:
    t = PromptTemplate("p", "1", "{{company}}", (PromptVariable("company"),))
    with pytest.raises(ClientError, match="'company'") as info:
        render(t, {})
    assert (info.value.code, info.value.param) == ("invalid_prompt", "prompt.variables.company")


def test_prompts_render_unknown_variable_is_rejected() -> None:
    t = PromptTemplate("p", "1", "{{company}}", (PromptVariable("company", "Acme"),))
    with pytest.raises(ClientError, match="no variable 'compnay'") as info:
        render(t, {"compnay": "Acme"})
    assert (info.value.code, info.value.param) == ("invalid_prompt", "prompt.variables.compnay")


@pytest.mark.parametrize(
    "value",
    [
        42,
        None,
        ["a"],
        {"type": "input_text"},
        {"type": "input_text", "text": 3},
        {"type": "input_image"},
        {"type": "input_image", "image_url": ""},
        {"type": "input_image", "image_url": PNG, "detail": "ultra"},
        {"type": "input_image", "file_id": "file_123"},
        {"type": "input_file", "file_data": "..."},
        {"text": "no type"},
    ],
)
def test_prompts_render_wrong_type_is_rejected(value: object) -> None:
    t = PromptTemplate("p", "1", "{{v}}", (PromptVariable("v", "default"),))
    with pytest.raises(ClientError) as info:
        render(t, {"v": value})
    assert (info.value.code, info.value.param) == ("invalid_prompt", "prompt.variables.v")


def test_prompts_render_leaves_other_braces_untouched() -> None:
    text = (
        'Reply as JSON: {"name": "{{name}}", "tags": {"a": 1}}. '
        "Literal {{ not a name }}, {{}}, {single}, {{{name}}} and }}{{."
    )
    t = PromptTemplate("p", "1", text, (PromptVariable("name"),))
    assert render(t, {"name": "Ada"}).instructions == (
        'Reply as JSON: {"name": "Ada", "tags": {"a": 1}}. '
        "Literal {{ not a name }}, {{}}, {single}, {Ada} and }}{{."
    )


def test_prompts_render_does_not_expand_values() -> None:
    t = PromptTemplate("p", "1", "{{a}} {{b}}", (PromptVariable("a"), PromptVariable("b", "B")))
    assert render(t, {"a": "{{b}} {{__class__}}"}).instructions == "{{b}} {{__class__}} B"


# --- template files --------------------------------------------------------------------------


def test_prompts_load_example_file() -> None:
    t = load_template_file(EXAMPLE)
    assert (t.id, t.version) == ("pmpt_support", "1")
    assert t.description
    defaults = {v.name: v.default for v in t.variables}
    assert defaults == {"company": None, "agent_name": "Sam", "logo": ""}

    plain = render(t, {"company": "Acme Telecom"})
    assert "You are Sam" in plain.instructions and "Acme Telecom" in plain.instructions
    assert '{"reason": "billing"' in plain.instructions  # JSON example survives
    assert "{{" not in plain.instructions
    assert plain.images == ()

    logo = {"type": "input_image", "image_url": PNG, "detail": "low"}
    with_logo = render(t, {"company": "Acme", "agent_name": "Ada", "logo": logo})
    assert "[image: logo]" in with_logo.instructions
    assert with_logo.images == (ImagePart(PNG, "low"),)
    with pytest.raises(ClientError, match="'company'"):
        render(t)


def test_prompts_load_file_then_store(tmp_path: Path) -> None:
    with Database(tmp_path / "parley.db") as db:
        store = PromptStore(db)
        stored = store.put(load_template_file(EXAMPLE))
        assert store.get("pmpt_support") == stored
        assert store.put(load_template_file(EXAMPLE)) == stored  # reloading is idempotent


def test_prompts_load_file_defaults_and_image_default(tmp_path: Path) -> None:
    path = tmp_path / "t.toml"
    path.write_text(
        'id = "pmpt_x"\n'
        'instructions = "{{who}} {{pic}} {{how}} {{need}}"\n'
        "[variables]\n"
        'pic = { type = "input_image", image_url = "data:image/png;base64,AA", detail = "high" }\n'
        'how = { type = "input_text", text = "kindly" }\n'
        'need = { type = "input_image" }\n',
        encoding="utf-8",
    )
    t = load_template_file(path)
    assert t.version == "1" and t.description == ""
    assert t.variables == (
        PromptVariable("who"),
        PromptVariable("pic", ImagePart("data:image/png;base64,AA", "high")),
        PromptVariable("how", "kindly"),
        PromptVariable("need"),
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('id = "p"\ninstructions = "x\n', r"not valid TOML: .*line 2"),
        ('instructions = "x"\n', "missing key 'id'"),
        ('id = "p"\n', "missing key 'instructions'"),
        ('id = "p"\ninstructions = "x"\nmodel = "gpt"\n', "unknown key 'model'"),
        ('id = "p"\nversion = 2\ninstructions = "x"\n', "version must be a string"),
        ('id = "bad id"\ninstructions = "x"\n', "prompt id 'bad id'"),
        ('id = "p"\ninstructions = "x"\nvariables = 3\n', "variables must be a table"),
        ('id = "p"\ninstructions = "x"\n[variables]\na = 3\n', "variable 'a': a default"),
        (
            'id = "p"\ninstructions = "x"\n[variables]\na = { type = "input_file" }\n',
            "type must be input_text or input_image",
        ),
        (
            'id = "p"\ninstructions = "x"\n[variables]\n'
            'a = { type = "input_image", image_url = "u", detail = "max" }\n',
            "detail must be one of",
        ),
        (
            'id = "p"\ninstructions = "x"\n[variables]\na = { type = "input_text", txt = "u" }\n',
            "unknown key 'txt'",
        ),
        ('id = "p"\ninstructions = "x"\n[variables]\n"a b" = "c"\n', "variable name 'a b'"),
    ],
)
def test_prompts_load_bad_file_is_a_config_error(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=message) as info:
        load_template_file(path)
    assert info.value.message.startswith(f"prompt file {path}") or "cannot read" in str(info.value)
    assert "\n" not in info.value.message


def test_prompts_load_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot read prompt file .*nope\.toml"):
        load_template_file(tmp_path / "nope.toml")
