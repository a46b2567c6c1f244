import numpy as np
import pytest

from veil.data.vocab import Pattern, all_combinations, caption, parse_phrase, split_combinations, split_prompts


@pytest.mark.parametrize("phrase, expected", [
    ("blue triangle", Pattern(colour="blue", shape="triangle")),
    ("green moving up", Pattern(colour="green", motion="up")),
    ("triangle moving left", Pattern(shape="triangle", motion="left")),
    ("a crimson disc slides leftward", Pattern(colour="red", shape="circle", motion="left")),
    ("Still", Pattern(motion="still")),
    ("white", Pattern(colour="white")),
    ("a square not moving", Pattern(shape="square", motion="still")),
    ("golden wedges drifting to the top", Pattern(colour="yellow", shape="triangle", motion="up")),
])
def test_parse_phrase(phrase, expected):
    assert parse_phrase(phrase) == expected


@pytest.mark.parametrize("phrase, word", [("purple circle", "purple"), ("red hexagon", "hexagon"),
                                          ("red blue", "blue"), ("the a", "no colour")])
def test_parse_phrase_errors(phrase, word):
    with pytest.raises(ValueError, match=word):
        parse_phrase(phrase)
    with pytest.raises(TypeError):
        parse_phrase(3)


def test_split_combinations_counts():
    seen, held = split_combinations(["blue triangle", "green moving up"])
    # 5 blue triangles (one per motion) + 3 green shapes moving up
    assert len(held) == 8 and len(seen) == 75 - 8
    assert ("blue", "triangle", "still") in held and ("green", "square", "up") in held
    assert ("blue", "square", "up") in seen and ("green", "triangle", "down") in seen
    assert sorted(seen + held) == sorted(all_combinations())
    prompts = split_prompts("triangle moving left")
    assert prompts["held_out"] == [f"a {c} triangle moving left" for c in ("red", "green", "blue", "yellow", "white")]
    assert len(prompts["seen"]) == 70 and "a red triangle moving right" in prompts["seen"]
    with pytest.raises(ValueError, match="every combination"):
        split_combinations(["red", "green", "blue", "yellow", "white"])


def test_every_caption_parses_back_to_its_triple():
    rng = np.random.default_rng(0)
    for combo in all_combinations():
        assert caption(*combo) == f"a {combo[0]} {combo[1]} " + (
            "staying still" if combo[2] == "still" else f"moving {combo[2]}")
        for _ in range(6):
            text = caption(*combo, rng)
            assert parse_phrase(text) == Pattern(*combo), text
