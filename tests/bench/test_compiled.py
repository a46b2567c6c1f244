"""``veil bench models --compile`` helpers: the compiled call toggles one module object; the row format."""

import torch

from veil.bench import compiled


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(4, 4))

    def forward(self, x):
        return torch.tanh(x @ self.w)


def test_compiled_call_runs_the_same_module_compiled_then_eager_again():
    torch._dynamo.reset()
    lin = Tiny()
    x = torch.randn(2, 4)
    run = compiled._compiled(lin, lambda x: lin(x), fullgraph=True)
    torch.testing.assert_close(run(x), lin(x))
    assert lin._compiled_call_impl is None  # outside the call the module is eager again
    frames = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    assert frames >= 1


def test_row_format_has_every_column():
    row = compiled.CompileRow("wan", "M", "8x16x16 = 2048", "full", "forward", 1e-6, "diffusers",
                              {"diffusers": 10.0, "diffusers compiled": 8.0, "veil": 9.0, "veil compiled": 7.0},
                              10 / 7, 8 / 7, 9 / 7)
    line = compiled.format_row(row)
    assert line.count("|") == compiled.HEADER.splitlines()[0].count("|")
    assert "| 1.43 | 1.14 | 1.29 |" in line
