"""The paper's supervised protocols (``ssl-zoo eval --protocol linear-paper | semisup``): through
the CLI on demo and on a folder source, two SGD steps of the linear protocol against a
float64 loop written out by hand, the labelled subsets, and an interrupted protocol run that
resumes to the end an uninterrupted one reaches."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from ssl_zoo import assemble
from ssl_zoo.backbones import build_backbone
from ssl_zoo.cli import main
from ssl_zoo.data.loader import epoch_permutation, step_seed
from ssl_zoo.data.stats import IMAGENET
from ssl_zoo.data.views import eval_view, make_views
from ssl_zoo.errors import ConfigError
from ssl_zoo.evaluation.supervised import Supervised, balanced_fraction
from ssl_zoo.optim import step_decay
from ssl_zoo.train import Trainer

FAST = ["--no-progress", "--set", "train.logger=jsonl", "--set", "eval.batch_size=500"]


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A convnet's weights (our export layout), with batch-norm statistics that matter."""
    torch.manual_seed(3)
    net, _ = build_backbone("convnet", image_size=32)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 2.0)
    path = tmp_path_factory.mktemp("weights") / "convnet.pt"
    torch.save(net.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def small_npz(tmp_path_factory):
    """256 train and 64 test images of the demo set, as an npz source."""
    from ssl_zoo.data.sources import DEMO_PATH

    with np.load(DEMO_PATH) as z:
        arrays = {"x_train": z["x_train"][:256], "y_train": z["y_train"][:256],
                  "x_test": z["x_test"][:64], "y_test": z["y_test"][:64]}
    path = tmp_path_factory.mktemp("npz") / "small.npz"
    np.savez(path, **arrays)
    return path


@pytest.fixture(scope="module")
def ssl_run(tmp_path_factory):
    """A (very short) SimCLR run on demo: a run directory with a checkpoint."""
    run = tmp_path_factory.mktemp("ssl") / "run"
    assert main(["train", "--method", "simclr", "--dataset", "demo", "--epochs", "1",
                 "--batch-size", "64", "--no-eval", "--no-progress", "--out", str(run),
                 "--set", "train.max_steps=2", "--set", "train.logger=jsonl"]) == 0
    return run


def _accuracy_by_hand(ckpt: dict, backbone_name: str, images: torch.Tensor,
                      labels: torch.Tensor, mean, std) -> float:
    """Top-1 (percent) of a protocol checkpoint's backbone + linear layer, recomputed here."""
    net, dim = build_backbone(backbone_name, stem="cifar", image_size=images.shape[-1])
    net.load_state_dict({k[len("backbone."):]: v for k, v in ckpt["model"].items()
                         if k.startswith("backbone.")})
    w, b = ckpt["model"]["head.weight"], ckpt["model"]["head.bias"]
    net.eval()
    with torch.no_grad():
        x = (images.float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) \
            / torch.tensor(std).view(1, 3, 1, 1)
        pred = (net(x) @ w.T + b).argmax(1)
    return 100.0 * float((pred == labels).double().mean())


def test_linear_paper_on_a_demo_run_through_the_cli(ssl_run, capsys):
    assert main(["eval", str(ssl_run), "--protocol", "linear-paper", "--set", "train.epochs=1",
                 *FAST]) == 0
    out = capsys.readouterr().out
    res = json.loads((ssl_run / "eval_linear_paper.json").read_text())
    assert "last epoch" in out and "best epoch" in out
    assert res["protocol"] == "linear-paper" and res["n_test"] == 1000 and res["n_train"] == 2000
    assert [e["epoch"] for e in res["per_epoch"]] == [1]
    assert res["top1"] == res["top1_last_epoch"] == res["per_epoch"][-1]["top1"]
    assert res["top1_best_epoch"]["top1"] == max(e["top1"] for e in res["per_epoch"])
    assert "official" in res["top1_best_epoch"]["note"]
    assert "lr 0.3 (batch 256)" in res["recipe"]
    # the backbone stayed frozen (weights and batch-norm statistics) and the top-1 is what the
    # checkpoint's backbone + linear layer give on the test images, computed here
    src = torch.load(ssl_run / "checkpoints" / "last.pt", weights_only=True)
    ckpt = torch.load(ssl_run / "linear_paper" / "checkpoints" / "last.pt", weights_only=True)
    for k, v in src["model"].items():
        if k.startswith("backbone."):
            assert torch.equal(ckpt["model"][k], v), k
    cfg = json.loads((ssl_run / "config.json").read_text())
    demo = assemble.open_dataset(assemble.from_dict(assemble.RunConfig, {"dataset": "demo"}))
    top1 = _accuracy_by_hand(ckpt, "convnet", demo.test.images, demo.test.labels,
                             cfg["views"]["mean"], cfg["views"]["std"])
    assert res["top1"] == pytest.approx(top1, abs=1e-9)


def _folder(root, classes=3, per_class=8, test_per_class=3):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("test", test_per_class)):
        for c in range(classes):
            d = root / split / f"class{c}"
            d.mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
                pixels[..., c] = 255  # a class one can see
                Image.fromarray(pixels).save(d / f"c{c}_{split}_{i}.png")
    return root


def test_semisup_on_a_folder_source_with_weights_fraction_and_list(tmp_path, weights, capsys):
    data = _folder(tmp_path / "imgs")
    common = ["eval", "--weights", str(weights), "--backbone", "convnet", "--dataset",
              f"folder:{data}", "--protocol", "semisup", "--set", "image_size=16",
              "--set", "train.epochs=2", "--set", "train.num_workers=0", *FAST]
    out = tmp_path / "out"
    assert main([*common, "--label-fraction", "0.5", "--out", str(out)]) == 0
    res = json.loads((out / "eval_semisup.json").read_text())
    assert res["n_train"] == 12 and res["n_test"] == 9 and res["labelled_fraction"] == 0.5
    ckpt = torch.load(out / "semisup" / "checkpoints" / "last.pt", weights_only=True)
    start = torch.load(weights, weights_only=True)
    tuned = ckpt["model"]["backbone.features.0.weight"]
    assert not torch.equal(tuned, start["features.0.weight"]), "semisup fine-tunes the backbone"
    cfg = json.loads((out / "semisup" / "config.json").read_text())
    assert cfg["train"]["lr_scale"] == {"head.": 20.0}  # 10% rates: 0.2 / 0.01
    assert cfg["train"]["lr_schedule"] == "step" and cfg["train"]["lr_decay_epochs"] == [12, 16]

    names = [f"c{c}_train_{i}.png" for c in range(3) for i in (0, 5)]
    listed = tmp_path / "list.txt"
    listed.write_text("\n".join(names) + "\n")
    out2 = tmp_path / "out2"
    assert main([*common, "--label-list", str(listed), "--out", str(out2)]) == 0
    assert json.loads((out2 / "eval_semisup.json").read_text())["n_train"] == 6

    listed.write_text("\n".join([*names, "n01440764_10026.JPEG", "gone.png"]) + "\n")
    capsys.readouterr()
    assert main([*common, "--label-list", str(listed), "--out", str(tmp_path / "o3")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "2 of 8 images are not in" in err and "n01440764_10026.JPEG" in err \
        and "gone.png" in err


def test_linear_paper_on_a_folder_source_and_semisup_on_a_demo_run(tmp_path, weights, ssl_run):
    """The other two (protocol, source) pairs through the CLI: each trains its run and reports
    the full test split; linear-paper keeps the backbone frozen, semisup moves it."""
    data = _folder(tmp_path / "imgs")
    out = tmp_path / "lin"
    assert main(["eval", "--weights", str(weights), "--backbone", "convnet", "--dataset",
                 f"folder:{data}", "--protocol", "linear-paper", "--set", "image_size=16",
                 "--set", "train.epochs=1", "--set", "train.num_workers=0", *FAST,
                 "--out", str(out)]) == 0
    res = json.loads((out / "eval_linear_paper.json").read_text())
    assert res["n_train"] == 24 and res["n_test"] == 9
    ckpt = torch.load(out / "linear_paper" / "checkpoints" / "last.pt", weights_only=True)
    start = torch.load(weights, weights_only=True)
    assert torch.equal(ckpt["model"]["backbone.features.0.weight"], start["features.0.weight"])

    assert main(["eval", str(ssl_run), "--protocol", "semisup", "--label-fraction", "0.1",
                 "--set", "train.epochs=1", *FAST]) == 0
    res = json.loads((ssl_run / "eval_semisup.json").read_text())
    # 10% of each class, rounded per class (10 classes)
    assert res["n_test"] == 1000 and abs(res["n_train"] - 200) <= 10
    src = torch.load(ssl_run / "checkpoints" / "last.pt", weights_only=True)
    tuned = torch.load(ssl_run / "semisup" / "checkpoints" / "last.pt", weights_only=True)
    moved = [k for k, v in src["model"].items()
             if k.startswith("backbone.") and v.is_floating_point()
             and not torch.equal(tuned["model"][k], v)]
    assert moved, "semisup fine-tunes the backbone"


def test_user_mistakes_of_the_protocols_are_one_line_errors(ssl_run, capsys):
    for extra, message in ((["--protocol", "semisup"], "--label-fraction"),
                           (["--protocol", "linear-paper", "--label-fraction", "0.1"],
                            "go with --protocol semisup"),
                           (["--label-fraction", "0.1"], "go with --protocol semisup"),
                           (["--protocol", "semisup", "--label-fraction", "1.5"],
                            "fraction in (0, 1]"),
                           (["--protocol", "semisup", "--label-list", "x.txt"],
                            "no such file"),
                           (["--protocol", "linear-paper", "--set", "train.lr_schedule=steps"],
                            "train.lr_schedule"),
                           (["--protocol", "linear-paper",
                             "--set", 'train.lr_scale={"head.": -1}'],
                            "positive number")):
        assert main(["eval", str(ssl_run), *extra, *FAST]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, (extra, err)


def test_two_sgd_steps_of_the_linear_protocol_match_a_float64_loop(weights):
    """The trainer's first two steps of linear-paper (same batches, same crops) against the
    cross-entropy gradient, weight decay on every parameter, momentum and the cosine rate
    written out in float64."""
    state = torch.load(weights, weights_only=True)
    source = {"dataset": "demo", "backbone": "convnet", "backbone_stem": "cifar",
              "image_size": 32, "train": {"seed": 5}}
    batch, total = 64, 3
    run = assemble.for_protocol("linear-paper", source, state, *IMAGENET,
                                [f"train.batch_size={batch}", f"train.max_steps={total}",
                                 "eval.enabled=false", "train.logger=jsonl"])
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        trainer = Trainer(run, d, show_progress=False)
        w0 = trainer.method.head.weight.detach().double().clone()
        b0 = trainer.method.head.bias.detach().double().clone()
        seen = []
        trainer.method.after_optimizer_step = lambda ctx: seen.append(
            (trainer.method.head.weight.detach().double().clone(),
             trainer.method.head.bias.detach().double().clone()))
        trainer.fit()
        bn_after = {k: v.clone() for k, v in trainer.method.backbone.state_dict().items()}
    assert torch.std(w0) == pytest.approx(0.01, rel=0.1) and torch.all(b0 == 0)  # RegLog init
    for k, v in state.items():  # frozen: weights and statistics untouched
        assert torch.equal(bn_after[k], v), k

    data = run.data.train
    net, _ = build_backbone("convnet", stem="cifar", image_size=32)
    net.load_state_dict(state)
    net = net.double().eval()
    peak, wd, mom = 0.3 * batch / 256, 1e-6, 0.9
    w, b = w0.clone(), b0.clone()
    buf_w = buf_b = None
    order = epoch_permutation(len(data), 5, 0)
    for k in range(2):
        idx = order[k * batch:(k + 1) * batch]
        torch.manual_seed(step_seed(5, k, 0))
        crops = make_views(data.images[idx], run.view_spec)[0]
        with torch.no_grad():
            f = net(crops.double())
        y = F.one_hot(data.labels[idx], 10).double()
        p = torch.softmax(f @ w.T + b, dim=1)
        g = (p - y) / batch
        dw, db = g.T @ f + wd * w, g.sum(0) + wd * b
        buf_w = dw if buf_w is None else mom * buf_w + dw
        buf_b = db if buf_b is None else mom * buf_b + db
        lr = 0.5 * peak * (1 + math.cos(math.pi * k / (total - 1)))  # cosine, no warm-up
        w, b = w - lr * buf_w, b - lr * buf_b
        torch.testing.assert_close(seen[k][0], w, rtol=1e-4, atol=1e-7)
        torch.testing.assert_close(seen[k][1], b, rtol=1e-4, atol=1e-7)
    assert not torch.equal(seen[1][0], seen[0][0])


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(-1, 4), min_size=1, max_size=200), st.floats(0.01, 1.0),
       st.integers(0, 2**31 - 1))
def test_the_label_fraction_is_class_balanced_and_seeded(labels, fraction, seed):
    y = torch.tensor(labels)
    if not (y >= 0).any():
        return
    idx = balanced_fraction(y, fraction, seed)
    assert torch.equal(idx, balanced_fraction(y, fraction, seed))  # seeded
    assert idx.unique().shape == idx.shape and torch.equal(idx, idx.sort().values)
    picked = np.bincount(np.asarray(labels)[idx.numpy()] + 1, minlength=6)
    have = np.bincount(np.asarray(labels) + 1, minlength=6)
    assert picked[0] == 0  # never an unlabelled image
    for c in range(1, 6):
        want = 0 if have[c] == 0 else max(1, int(round(fraction * have[c])))
        assert picked[c] == want


def test_another_seed_draws_another_subset():
    y = torch.arange(1000) % 10
    a, b = balanced_fraction(y, 0.1, 0), balanced_fraction(y, 0.1, 1)
    assert a.shape == b.shape == (100,) and not torch.equal(a, b)
    with pytest.raises(ConfigError):
        balanced_fraction(y, 0.0, 0)


def test_the_step_schedule_is_torchs_multisteplr_per_epoch():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.5)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, [3, 5], gamma=0.2)
    for epoch in range(8):
        for i in range(4):
            assert step_decay(epoch * 4 + i, 4, 0, 0.5, [3, 5], 0.2) == pytest.approx(
                opt.param_groups[0]["lr"])
        opt.step()
        sched.step()


def test_a_head_lr_scale_gives_the_head_its_own_rate(weights):
    state = torch.load(weights, weights_only=True)
    source = {"dataset": "demo", "backbone": "convnet", "backbone_stem": "cifar",
              "image_size": 32}
    run = assemble.for_protocol("semisup", source, state, *IMAGENET,
                                ["train.max_steps=1", "eval.enabled=false",
                                 "train.logger=jsonl"], label_fraction=0.1)
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        trainer = Trainer(run, d, show_progress=False)
        trainer.fit()
        rates = {}
        names = {id(p): n for n, p in trainer.method.named_parameters()}
        for g in trainer.optimizer.param_groups:
            for p in g["params"]:
                rates[names[id(p)]] = g["lr"]
    batch = run.config.train.batch_size
    assert batch == len(run.data.train) < 256  # 10% of demo's 2,000, under the recipe's 256
    spe, peak = trainer.steps_per_epoch, 0.01 * batch / 256
    assert [trainer.lr_at(e * spe) for e in (0, 11, 12, 15, 16, 19)] == pytest.approx(
        [peak, peak, peak * 0.2, peak * 0.2, peak * 0.04, peak * 0.04])
    assert rates["head.weight"] == pytest.approx(0.2 * batch / 256)
    assert rates["backbone.features.0.weight"] == pytest.approx(0.01 * batch / 256)
    assert isinstance(trainer.method, Supervised) and not trainer.method.config.freeze_backbone


def test_an_interrupted_protocol_run_resumes_to_the_same_end(tmp_path, weights, small_npz,
                                                            monkeypatch):
    args = ["eval", "--weights", str(weights), "--backbone", "convnet", "--dataset",
            f"npz:{small_npz}", "--protocol", "linear-paper", "--set", "train.epochs=2",
            "--set", "train.batch_size=64",
            "--set", "train.checkpoint_every_iters=2", "--set", "train.log_every_iters=1",
            *FAST]
    full, part = tmp_path / "full", tmp_path / "part"
    assert main([*args, "--out", str(full)]) == 0

    real = Supervised.after_optimizer_step

    def killed_at_step_5(self, ctx):  # after epoch 1's evaluation and the checkpoint of step 4
        if ctx.step == 5:
            raise KeyboardInterrupt
        real(self, ctx)

    monkeypatch.setattr(Supervised, "after_optimizer_step", killed_at_step_5)
    assert main([*args, "--out", str(part)]) == 130
    monkeypatch.setattr(Supervised, "after_optimizer_step", real)
    assert main([*args, "--out", str(part)]) == 0  # the same command continues it

    a = torch.load(full / "linear_paper" / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(part / "linear_paper" / "checkpoints" / "last.pt", weights_only=True)
    assert a["step"] == b["step"] == 8
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for (_, va), (_, vb) in zip(a["optimizer"]["state"].items(), b["optimizer"]["state"].items()):
        for name in va:
            assert torch.equal(torch.as_tensor(va[name]), torch.as_tensor(vb[name]))
    ra = json.loads((full / "eval_linear_paper.json").read_text())
    rb = json.loads((part / "eval_linear_paper.json").read_text())
    assert ra["per_epoch"] == rb["per_epoch"] and len(ra["per_epoch"]) == 2
    assert ra["top1"] == rb["top1"] and ra["top1_best_epoch"] == rb["top1_best_epoch"]

    def records(run):
        return [{k: v for k, v in json.loads(x).items() if k not in ("images_per_s", "train_s")}
                for x in (run / "linear_paper" / "metrics.jsonl").read_text().splitlines()]

    assert records(full) == records(part)


def test_eval_view_of_demo_images_is_the_images_themselves():
    """What the hand-written accuracy above relies on: 32-px images pass the evaluation view
    unchanged (then normalised)."""
    x = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    torch.testing.assert_close(eval_view(x, 32, (0.0,) * 3, (1.0,) * 3), x.float() / 255)
