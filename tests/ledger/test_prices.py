"""The price table: exact nano-dollars, rounded up, by engine instance then by stage."""

from __future__ import annotations

import pytest

from parley.errors import ConfigError
from parley.ledger import NANO_PER_USD, PriceTable, Units, nusd, tokens_bound

PRICES = {
    "cloud-llm": {"input_token": 0.0000025, "output_token": 0.00001},
    "asr": {"audio_second": 0.0001},
    "tts": {"character": 0.000015},
}


def test_prices_cost_is_exact_in_nano_dollars() -> None:
    table = PriceTable(PRICES)
    units = Units(input_tokens=1000, output_tokens=200)
    assert table.cost_nusd("cloud-llm", "llm", units) == 2_500_000 + 2_000_000
    # 0.1 s is one tenth (its decimal text), not the float just above it.
    assert table.cost_nusd("pocketsphinx", "asr", Units(audio_in_s=0.1)) == 10_000
    assert table.cost_nusd("espeak", "tts", Units(characters=3)) == 45_000


def test_prices_round_up_to_a_whole_nano_dollar() -> None:
    table = PriceTable({"cheap": {"input_token": 1e-10}})
    assert table.cost_nusd("cheap", "llm", Units(input_tokens=1)) == 1
    assert table.cost_nusd("cheap", "llm", Units(input_tokens=10)) == 1
    assert table.cost_nusd("cheap", "llm", Units(input_tokens=11)) == 2
    assert table.cost_nusd("cheap", "llm", Units()) == 0


def test_prices_engine_first_then_stage() -> None:
    table = PriceTable({**PRICES, "llm": {"output_token": 0.001}})
    assert table.cost_nusd("cloud-llm", "llm", Units(output_tokens=1)) == 10_000
    assert table.cost_nusd("openai", "llm", Units(output_tokens=1)) == 1_000_000


def test_prices_stage_key_only_for_the_configured_engine_when_told_which() -> None:
    table = PriceTable(PRICES, configured={"asr": "pocketsphinx"})
    assert table.cost_nusd("pocketsphinx", "asr", Units(audio_in_s=1)) == 100_000
    assert table.cost_nusd("local-asr", "asr", Units(audio_in_s=1)) == 0


def test_prices_free_engines_and_empty_table() -> None:
    assert PriceTable().cost_nusd("cloud-llm", "llm", Units(input_tokens=10**6)) == 0
    assert not PriceTable()
    assert PriceTable(PRICES)
    assert PriceTable(PRICES).cost_nusd("local-llm", "llm", Units(input_tokens=99)) == 0


def test_prices_audio_in_and_out_both_count() -> None:
    table = PriceTable({"s2s": {"audio_second": 0.001}})
    assert table.cost_nusd("s2s", "llm", Units(audio_in_s=1.5, audio_out_s=0.5)) == 2_000_000


def test_prices_bound_covers_the_cost_and_sums_a_chain() -> None:
    table = PriceTable({**PRICES, "backup-llm": {"output_token": 0.00002}})
    bound = Units(input_tokens=tokens_bound("hello there"), output_tokens=100)
    actual = Units(input_tokens=3, output_tokens=42)
    assert table.bound_nusd("cloud-llm", "llm", bound) >= table.cost_nusd(
        "cloud-llm", "llm", actual
    )
    chain = table.bound_nusd(["cloud-llm", "backup-llm"], "llm", bound)
    assert chain == table.bound_nusd("cloud-llm", "llm", bound) + table.bound_nusd(
        "backup-llm", "llm", bound
    )


@pytest.mark.parametrize(
    "prices",
    [
        {"x": {"token": 1.0}},
        {"x": {"input_token": -1.0}},
        {"x": {"input_token": float("inf")}},
        {"x": {"input_token": "cheap"}},
        {"x": 0.1},
    ],
)
def test_prices_bad_tables_are_config_errors(prices: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        PriceTable(prices)  # type: ignore[arg-type]


def test_prices_usd_to_nano_dollars() -> None:
    assert nusd(1.0) == NANO_PER_USD
    assert nusd(0.000000001) == 1
    assert nusd(12.34) == 12_340_000_000
    with pytest.raises(ValueError):
        Units(input_tokens=-1)
