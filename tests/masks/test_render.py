"""Mask pictures: literal text for small masks, the cell rule for downsampled ones, PNG pixels."""

import pytest
import torch
from PIL import Image

import veil.masks as M
from veil.masks.render import cell_counts, to_ascii, to_png


def test_ascii_causal_square_and_kv_cache():
    assert to_ascii(M.causal(), 3) == "#..\n##.\n###"
    # K > Q: the queries are the last positions (bottom-right)
    assert to_ascii(M.causal(), 2, 4) == "###.\n####"


def test_ascii_downsampled_cells_all_some_none():
    # 8 x 8 causal in 4 x 4 cells of 2 x 2 pairs: the diagonal cells hold 3 of 4 attended pairs
    assert to_ascii(M.causal(), 8, max_size=4) == "+...\n#+..\n##+.\n###+"


def test_cell_counts_uneven_split_follows_the_documented_edges():
    # Q=5 in 2 cells: rows [0, 2) and [2, 5); K=3 in 2 cells: columns [0, 1) and [1, 3)
    attended, pairs = cell_counts(M.causal(), 5, 3, rows=2, cols=2)
    assert pairs.tolist() == [[2, 4], [3, 6]]
    # causal with K < Q: query i sits at i - 2, so rows 0, 1 see nothing; row 2 sees key 0; rows 3, 4 see 0..1, 0..2
    assert attended.tolist() == [[0, 0], [3, 3]]


def test_tensor_and_mask_give_the_same_picture_and_padding_picks_the_sample():
    m = M.key_padding(torch.tensor([1, 3]))
    assert to_ascii(m, 2, 4, batch=2, sample=1) == "###.\n###."
    assert to_ascii(m.to_bool(2, 1, 2, 4)[0, 0]) == "#...\n#..."


def test_png_one_pixel_per_pair_then_grey_cells(tmp_path):
    size = to_png(M.causal(), tmp_path / "a.png", 3)
    assert size == (3, 3)
    px = torch.tensor(list(Image.open(tmp_path / "a.png").getdata())).view(3, 3)
    assert px.tolist() == [[0, 255, 255], [0, 0, 255], [0, 0, 0]]
    to_png(M.causal(), tmp_path / "b.png", 4, max_size=2)
    px = torch.tensor(list(Image.open(tmp_path / "b.png").getdata())).view(2, 2)
    assert px.tolist() == [[64, 255], [0, 64]]  # 3 of 4 pairs attended -> round(255 / 4)


def test_bad_input_names_the_argument():
    with pytest.raises(ValueError, match="q_len"):
        to_ascii(M.causal())
    with pytest.raises(ValueError, match=r"mask: expected a bool tensor \[Q, K\]"):
        to_ascii(torch.ones(2, 2))
    with pytest.raises(ValueError, match="sample"):
        to_ascii(M.causal(), 2, sample=1)
    with pytest.raises(TypeError, match="mask"):
        to_ascii("causal", 2)
