"""A scene file of a run with channel mixing (format 4): trained by ``ns-train nerfcodec``, exported,
decoded to exactly the planes training-time evaluation renders, with its mixers counted."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_MODEL_ARGS, train_tiny

# the tiny model settings with the default codec (channel mixing, 2 images per plane; frozen RGB layers)
TINY_DEFAULT_CODEC_ARGS = TINY_MODEL_ARGS[: TINY_MODEL_ARGS.index("--pipeline.model.codec.mix-images")]

from nerfcodec_ns.scenefile.container import Bitstream, Section, pack, read_file, unpack
from nerfcodec_ns.scenefile.decode import decode_file
from nerfcodec_ns.scenefile.header import BitstreamError


@pytest.fixture(scope="module")
def mixed_run(tiny_scene, tiny_backbone, tmp_path_factory):
    return train_tiny(tiny_scene, tmp_path_factory.mktemp("runs_mixed"), "--pipeline.model.codec.weights",
                      str(tiny_backbone), model_args=TINY_DEFAULT_CODEC_ARGS)


@pytest.fixture(scope="module")
def mixed_nfc(mixed_run, tmp_path_factory):
    from nerfcodec_ns.scenefile.export import export_run

    path = tmp_path_factory.mktemp("nfc_mixed") / "mixed.nfc"
    return path, export_run(mixed_run, path)


def test_mixed_file_decodes_to_the_evaluated_planes_exactly(mixed_run, mixed_nfc, tiny_backbone):
    from nerfstudio.utils.eval_utils import eval_setup

    _, pipeline, _, _ = eval_setup(mixed_run, test_mode="inference")
    model = pipeline.eval().model
    assert model.codec.mix_images == 2 and bool(model.codec.mix_ready.all())  # the defaults
    assert not model.codec.config.adapt_heads
    with torch.no_grad():
        expected = model.render_planes()
    assert expected is not None
    bs = read_file(mixed_nfc[0])
    assert bs.header.codec.mix_images == 2
    levels = len(bs.header.levels)
    assert all(bs.has_section(f"mix.{level}") for level in range(levels))
    assert not bs.has_section("head")
    scene = decode_file(mixed_nfc[0], tiny_backbone)
    for got, want in zip(scene.planes, expected):
        assert torch.equal(got, want.cpu())


def test_mixed_file_with_the_wrong_string_count_is_refused(mixed_nfc, tiny_backbone, tmp_path):
    from nerfcodec_ns.scenefile.payload import decode_strings, encode_strings

    bs = unpack(mixed_nfc[0].read_bytes())
    sections = []
    for s in bs.sections:
        if s.name == "y.0":  # drop one image's string: 5 of the 6 a two-image level needs
            s = Section(s.name, encode_strings(decode_strings(s.payload)[:-1]))
        sections.append(s)
    bad = tmp_path / "bad.nfc"
    bad.write_bytes(pack(Bitstream(bs.header, tuple(sections))))
    with pytest.raises(BitstreamError, match="expected 6 y and 6 z strings"):
        decode_file(bad, tiny_backbone)

