"""RMSNorm in >= float32."""

import torch

from titans.layers import RMSNorm


def test_rms_norm_matches_the_definition_and_keeps_the_input_dtype():
    norm = RMSNorm(6, eps=1e-6)
    with torch.no_grad():
        norm.weight.copy_(torch.arange(1.0, 7.0))
    x = torch.randn(3, 6, dtype=torch.float64)
    expected = x / (x.pow(2).mean(-1, keepdim=True) + 1e-6).sqrt() * torch.arange(1.0, 7.0)
    torch.testing.assert_close(norm.double()(x), expected, rtol=1e-12, atol=1e-12)
    out = RMSNorm(6)(x.to(torch.bfloat16))
    assert out.dtype == torch.bfloat16
