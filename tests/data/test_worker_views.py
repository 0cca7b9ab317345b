"""Views made in the loader's workers (``train.views_in=workers``, a CPU run's default for
folders and prepared stores) against views made in the step from the same batch and seed:
the same crops, the same training, the same resume; bad files still named or skipped."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from ssl_zoo.assemble import resolve
from ssl_zoo.data.loader import BatchLoader, WorkerViews, step_seed
from ssl_zoo.data.prepared import prepare
from ssl_zoo.data.sources import open_source
from ssl_zoo.data.views import CropGroup, ViewSpec, make_views, multi_crop, skip_view_draws
from ssl_zoo.errors import ConfigError, DataError
from ssl_zoo.train import Trainer, views_in_workers

SHAPES = [(30, 40), (40, 30), (24, 12), (6, 5), (10, 40)]
"""(h, w) of the originals: 4:3, 3:4, 1:2, tiny, wide."""
SPEC = multi_crop(16, 8, 2, (0.14, 1.0), (0.05, 0.14), 1.0, 0.5)


def _folder(root, n=24):
    rng = np.random.default_rng(0)
    for i in range(n):
        h, w = SHAPES[i % len(SHAPES)]
        (root / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(
            root / f"c{i % 2}" / f"{i:02d}.png")
    return root


@pytest.fixture
def store(tmp_path):
    folder = _folder(tmp_path / "imgs")
    prepare(f"folder:{folder}", tmp_path / "store", canvas=18, workers=0, show_progress=False)
    return tmp_path / "store"


def _same_views(a, b):
    assert a.counts == b.counts
    for ga, gb in zip(a.groups, b.groups):
        assert torch.equal(ga, gb)


@settings(max_examples=25, deadline=None)
@given(batch=st.integers(1, 9), counts=st.lists(st.integers(0, 3), min_size=1, max_size=3),
       with_sizes=st.booleans(), seed=st.integers(0, 2**31))
def test_skipping_the_draws_leaves_the_generator_where_making_the_views_does(
        batch, counts, with_sizes, seed):
    if not any(counts):
        counts = [*counts[:-1], 1]  # a spec needs one crop
    spec = ViewSpec(groups=[CropGroup(count=c, size=6 + 2 * i) for i, c in enumerate(counts)])
    images = torch.randint(0, 256, (batch, 3, 12, 12), dtype=torch.uint8)
    sizes = torch.randint(1, 50, (batch, 2)) if with_sizes else None
    made, skipped = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
    make_views(images, spec, made, sizes)
    skip_view_draws(spec, batch, "cpu", skipped)
    assert torch.equal(made.get_state(), skipped.get_state())
    # and the global generator, as the trainer uses it
    torch.manual_seed(seed)
    make_views(images, spec, None, sizes)
    after_made = torch.get_rng_state()
    torch.manual_seed(seed)
    skip_view_draws(spec, batch)
    assert torch.equal(after_made, torch.get_rng_state())


@pytest.mark.parametrize("source", ["prepared", "folder"])
def test_workers_make_the_crops_the_step_would_make(source, store, tmp_path):
    spec_str = f"prepared:{store}" if source == "prepared" else f"folder:{tmp_path / 'imgs'}"
    ds = open_source(spec_str, image_size=16).train
    plain = BatchLoader(ds, 4, seed=3, num_workers=0)
    viewing = BatchLoader(ds, 4, seed=3, num_workers=2, views=WorkerViews(SPEC, seed=7, rank=1))
    for epoch, start, first_step in [(0, 0, None), (1, 2, None), (2, 1, 40)]:
        plain.set_epoch(epoch)
        viewing.set_epoch(epoch)
        got = list(viewing.iterate(start, first_step=first_step))
        want = list(plain.iterate(start))
        assert len(got) == len(want) == len(plain) - start
        step0 = epoch * len(plain) + start if first_step is None else first_step
        for k, ((views, index, sizes), (images, index2, sizes2)) in enumerate(zip(got, want)):
            assert torch.equal(index, index2) and torch.equal(sizes, sizes2)
            gen = torch.Generator().manual_seed(step_seed(7, step0 + k, 1))
            _same_views(views, make_views(images, SPEC, gen, sizes2))
    viewing.close()  # (a loader left to the garbage collector can stall it, see close())


def test_in_memory_data_gets_its_views_from_the_loader_in_process():
    from ssl_zoo.data.datasets import TensorImages

    ds = TensorImages("t", torch.randint(0, 256, (20, 3, 16, 16), dtype=torch.uint8))
    spec = multi_crop(16, 8, 2, (0.14, 1.0), (0.05, 0.14), 1.0, 0.5)
    loader = BatchLoader(ds, 5, seed=0, num_workers=2, views=WorkerViews(spec, seed=0))
    plain = BatchLoader(ds, 5, seed=0)
    for k, ((views, index, sizes), (images, index2, _)) in enumerate(
            zip(loader.iterate(), plain.iterate())):
        assert sizes is None and torch.equal(index, index2)
        _same_views(views, make_views(images, spec,
                                      torch.Generator().manual_seed(step_seed(0, k, 0))))


def test_bad_files_are_skipped_in_the_workers_and_counted_here(tmp_path):
    import io

    folder = _folder(tmp_path / "imgs", n=12)
    # a truncated JPEG passes the open-time check and fails only when decoded (in a worker)
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(5).integers(0, 256, (48, 48, 3), dtype=np.uint8)
                    ).save(buf, "JPEG")
    bad = folder / "c1" / "99.jpg"
    bad.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    skipping = open_source(f"folder:{folder}", image_size=16, skip_bad_images=True).train
    reference = open_source(f"folder:{folder}", image_size=16, skip_bad_images=True).train
    assert skipping.skipped == 0
    viewing = BatchLoader(skipping, 4, seed=0, num_workers=2, views=WorkerViews(SPEC, seed=0))
    got = list(viewing.iterate())
    viewing.close()
    assert skipping.bad_while_decoding.keys() == {skipping.files.index(bad)}  # from a worker
    plain = BatchLoader(reference, 4, seed=0, num_workers=0)  # replaced in this process
    for k, ((views, index, sizes), (images, index2, sizes2)) in enumerate(
            zip(got, plain.iterate())):
        assert torch.equal(index, index2) and torch.equal(sizes, sizes2)  # same substitute
        gen = torch.Generator().manual_seed(step_seed(0, k, 0))
        _same_views(views, make_views(images, SPEC, gen, sizes2))
    strict = open_source(f"folder:{folder}", image_size=16).train
    with pytest.raises(DataError, match=r"unreadable image: .*99\.jpg.*--skip-bad-images") as err:
        list(BatchLoader(strict, 4, seed=0, num_workers=2,
                         views=WorkerViews(SPEC, seed=0)).iterate())
    assert "Traceback" not in str(err.value)


def _fit(tmp_path, name, sets):
    run = resolve({}, ["backbone=convnet", "image_size=16", "train.batch_size=8",
                       "train.epochs=2", "train.log_every_iters=1", "eval.enabled=false",
                       "train.device=cpu", *sets])
    trainer = Trainer(run, tmp_path / name, show_progress=False)
    trainer.fit()
    metrics = [{k: v for k, v in json.loads(x).items() if k not in ("images_per_s", "train_s")}
               for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
    return trainer, metrics


@pytest.mark.parametrize("method", [
    ["method=swav", "method.num_prototypes=8"],
    # MoCo's shuffled BN draws a permutation from torch's generator after the crops
    ["method=moco", "method.queue_length=16", "method.shuffle_bn_groups=2"],
])
def test_a_run_with_views_in_the_workers_trains_exactly_as_one_with_views_in_the_step(
        method, store, tmp_path):
    sets = [*method, f"dataset=prepared:{store}", "train.num_workers=2"]
    a, ma = _fit(tmp_path, "workers", [*sets, "train.views_in=auto"])
    b, mb = _fit(tmp_path, "step", [*sets, "train.views_in=step"])
    assert a.views_in_workers and not b.views_in_workers
    assert ma == mb and len(ma) == a.step == 6
    sa, sb = a.method.state_dict(), b.method.state_dict()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def test_without_the_skipped_draws_the_moco_runs_part(store, tmp_path, monkeypatch):
    """The equality above needs :func:`skip_view_draws`: without it MoCo's permutation moves."""
    monkeypatch.setattr("ssl_zoo.train.skip_view_draws", lambda *a, **k: None)
    sets = ["method=moco", "method.queue_length=16", "method.shuffle_bn_groups=2",
            f"dataset=prepared:{store}", "train.num_workers=2"]
    _, ma = _fit(tmp_path, "workers", [*sets, "train.views_in=workers"])
    _, mb = _fit(tmp_path, "step", [*sets, "train.views_in=step"])
    # the same crops from step 1 on, but another shuffle permutation: another loss at once
    assert ma[0]["loss"] != mb[0]["loss"]


def test_where_the_views_are_made_by_default_and_a_typo():
    from ssl_zoo.data.datasets import TensorImages

    class Lazy:
        lazy = True

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    memory = TensorImages("t", torch.zeros((2, 3, 4, 4), dtype=torch.uint8))
    assert views_in_workers("auto", cpu, Lazy(), 2)
    assert not views_in_workers("auto", cpu, Lazy(), 0)
    assert not views_in_workers("auto", cpu, memory, 2)
    assert not views_in_workers("auto", cuda, Lazy(), 8)
    assert views_in_workers("workers", cuda, memory, 0)
    assert not views_in_workers("step", cpu, Lazy(), 2)
    with pytest.raises(ConfigError, match="train.views_in.*workers"):
        resolve({}, ["train.views_in=worker"])
