"""Device and dtype placement, with the backend's CUDA count given: the GPU paths without a GPU."""

from __future__ import annotations

import pytest

from parley.engines.device import Placement, parse_device, place
from parley.errors import ConfigError

DTYPES = {"cpu": ["float32", "int8"], "cuda": ["float16", "bfloat16", "float32"]}
AUTO = {"cpu": "int8", "cuda": "float16"}


def _place(device: str, dtype: str = "auto", *, gpus: int) -> Placement:
    return place(
        device,
        dtype,
        cuda_count=lambda: gpus,
        backend="TestBackend",
        dtypes=DTYPES,
        auto_dtype=AUTO,
        param="asr.options",
    )


@pytest.mark.parametrize(
    ("spec", "parsed"),
    [
        ("auto", ("auto", None)),
        ("cpu", ("cpu", None)),
        ("cuda", ("cuda", None)),
        ("cuda:1", ("cuda", 1)),
        (" CUDA:0 ", ("cuda", 0)),
    ],
)
def test_parse_device(spec: str, parsed: tuple[str, int | None]) -> None:
    assert parse_device(spec) == parsed


@pytest.mark.parametrize("spec", ["gpu", "cpu:0", "auto:1", "cuda:", "cuda:-1", "mps", ""])
def test_parse_device_rejects(spec: str) -> None:
    with pytest.raises(ConfigError, match="auto, cpu, cuda, cuda:N"):
        parse_device(spec)


@pytest.mark.parametrize(
    ("device", "dtype", "gpus", "expected"),
    [
        ("auto", "auto", 0, "cpu (int8)"),
        ("auto", "auto", 2, "cuda:0 (float16)"),
        ("cpu", "auto", 2, "cpu (int8)"),  # asked for the CPU: the GPU is not taken
        ("cuda", "auto", 1, "cuda:0 (float16)"),
        ("cuda:1", "bfloat16", 2, "cuda:1 (bfloat16)"),
        ("cpu", "float32", 0, "cpu (float32)"),
    ],
)
def test_place(device: str, dtype: str, gpus: int, expected: str) -> None:
    assert str(_place(device, dtype, gpus=gpus)) == expected


def test_cuda_without_a_gpu_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(ConfigError) as err:
        _place("cuda", gpus=0)
    assert "TestBackend sees no CUDA device" in err.value.message
    assert "CUDA_VISIBLE_DEVICES=''" in err.value.message
    assert err.value.param == "asr.options.device"


def test_cuda_index_beyond_the_gpus() -> None:
    with pytest.raises(ConfigError, match=r"sees 2 CUDA devices \(cuda:0..cuda:1\)"):
        _place("cuda:2", gpus=2)


def test_cpu_never_asks_the_backend_about_cuda() -> None:
    def boom() -> int:
        raise AssertionError("cuda_count called")

    placement = place("cpu", "auto", cuda_count=boom, backend="B", dtypes=DTYPES, auto_dtype=AUTO)
    assert placement == Placement("cpu", 0, "int8")


@pytest.mark.parametrize(
    ("device", "dtype", "gpus", "match"),
    [
        ("cpu", "float16", 0, "not supported on cpu by TestBackend; choose one of auto, float32"),
        ("cuda", "int8", 1, "not supported on cuda"),
        ("cpu", "fp16", 0, "is not one of auto, float32"),
    ],
)
def test_dtype_errors(device: str, dtype: str, gpus: int, match: str) -> None:
    with pytest.raises(ConfigError, match=match) as err:
        _place(device, dtype, gpus=gpus)
    assert err.value.param == "asr.options.dtype"
