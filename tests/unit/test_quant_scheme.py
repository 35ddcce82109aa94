import pytest

from compressor.errors import ConfigError
from compressor.quant import QuantScheme, TensorRole, supported_schemes


def test_parse_round_trips_every_supported_scheme() -> None:
    for spec in supported_schemes():
        assert QuantScheme.parse(spec).name == spec


@pytest.mark.parametrize("bad", ["gguf:Q3_X", "onnx-int4", "Q4_0", "gguf:", "tflite:int8"])
def test_unknown_schemes_list_the_choices(bad: str) -> None:
    with pytest.raises(ConfigError, match="gguf:Q4_0"):
        QuantScheme.parse(bad)


def test_four_bit_scheme_keeps_the_tied_head_at_eight_bits_unless_asked() -> None:
    s = QuantScheme.parse("gguf:Q4_0")
    assert s.requested_type(TensorRole.EMBEDDING) == "Q8_0"
    assert s.requested_type(TensorRole.MLP) == "Q4_0"
    assert QuantScheme.parse("gguf:Q4_0+embed=Q4_0").requested_type(TensorRole.EMBEDDING) == "Q4_0"
    assert s.requested_type(TensorRole.NORM) == "F32"


def test_k_quant_on_576_wide_rows_falls_back_like_llama_cpp() -> None:
    s = QuantScheme.parse("gguf:Q4_K_M")
    assert s.delegated_to_llama_cpp and s.row_multiple == 256
    plan = s.plan(TensorRole.MLP, 576)
    assert (plan.requested, plan.effective) == ("Q4_K", "Q5_0")
    assert "576" in (plan.reason or "") and "256" in (plan.reason or "")
    assert s.plan(TensorRole.MLP, 1536).effective == "Q4_K"


def test_block_types_fall_back_to_f16_when_rows_do_not_fill_blocks() -> None:
    plan = QuantScheme.parse("gguf:Q4_0").plan(TensorRole.MLP, 1000)
    assert plan.effective == "F16" and plan.reason


def test_bad_embedding_type_is_refused() -> None:
    with pytest.raises(ConfigError, match="embedding type"):
        QuantScheme.parse("gguf:Q4_0", embedding_type="Q9_9")
