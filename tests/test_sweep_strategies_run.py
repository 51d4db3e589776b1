"""The sweep with --strategy predicted, --lrs, --scheduler halving, --policy and --block-lr."""

import pandas as pd
import pytest

from keras_blockreuse.sweep.run import SweepSettings, main, run_sweep


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--strategy", "predicted", "--task", "detection"], "--strategy predicted needs a "
                                                             "classification task"),
        (["--strategy", "predicted", "--top-k", "0"], "--top-k must be a positive integer"),
        (["--scheduler", "halving", "--eta", "1"], "--eta must be at least 2"),
        (["--scheduler", "halving", "--strategy", "greedy"], "--scheduler halving needs a "
                                                             "fixed set"),
        (["--policy", "warm"], "invalid choice: 'warm'"),
        (["--policy-epochs", "0"], "--policy-epochs must be a positive integer"),
        (["--ft-factor", "2"], "--ft-factor must be in (0, 1]"),
        (["--block-lr", "block_1"], "Invalid block learning rates 'block_1'"),
        (["--lrs", "1e-3,x"], "--lrs must be numbers joined by commas"),
        (["--lrs", "1e-3,1e-3"], "--lrs must not repeat a rate"),
        (["--lrs", "1e-3,1e-2", "--scheduler", "halving"], "--lrs with several rates cannot"),
    ],
)
def test_bad_values_give_one_clear_line(argv, fragment, tmp_path, capsys):
    out = tmp_path / "out"
    try:
        code = main([*argv, "--out", str(out)])
    except SystemExit as exit_:
        code = exit_.code
    err = capsys.readouterr().err.strip()
    assert code == 2 and fragment in err and len(err.splitlines()) == 1, err
    assert not out.exists()


@pytest.mark.slow
def test_predicted_strategy_with_swept_learning_rates(ray_local, tmp_path):
    out = tmp_path / "out"
    lines = []
    run_sweep(SweepSettings(smoke=True, strategy="predicted", top_k=1,
                            blocks=["block_1", "block_2"], seeds=2, epochs=2,
                            lrs=[1e-3, 3e-3], out=str(out), cache=str(tmp_path / "cache")),
              print_fn=lines.append)
    predicted = pd.read_csv(out / "predicted.csv")
    top = predicted.loc[predicted["predicted_rank"] == 1, "key"].item()
    everything = "block_1=tuned,block_2=tuned"
    every = pd.read_csv(out / "results_all.csv")
    assert len(every) == 3 * 2 * 2            # scratch, top 1, all tuned x 2 seeds x 2 rates
    assert set(every["policy"]) == {"scratch", top, everything}
    kept = pd.read_csv(out / "results.csv")
    assert len(kept) == 3 * 2 and (kept["status"] == "ok").all()
    assert kept.groupby("policy")["lr"].nunique().eq(1).all()   # one rate per configuration
    for key, group in every.groupby("policy"):
        means = group.groupby("lr")["val_accuracy"].mean()
        assert kept.loc[kept["policy"] == key, "lr"].iloc[0] == means.idxmax()
    report = (out / "report.md").read_text()
    assert "## Predicted vs measured" in report and "chosen per configuration on validation" \
        in report
    assert "Kendall's tau over 1 measured configurations: n/a" in report
    assert any(line.startswith("Predicted ranking (") for line in lines)
    # The console counts every rate's trials (it had said "... x 2 seeds = 6 trials").
    planned = [line for line in lines if line.startswith("Experiment ")]
    assert planned and all(" x 2 seeds x 2 learning rates = " in line for line in planned)
    assert sum(int(line.rsplit("= ", 1)[1].split()[0]) for line in planned) == len(every)


@pytest.mark.slow
def test_halving_with_lp_ft_and_block_rates(ray_local, tmp_path):
    out = tmp_path / "out"
    run_sweep(SweepSettings(smoke=True, strategy="surgical", blocks=["block_1", "block_2"],
                            seeds=2, epochs=3, scheduler="halving", eta=2,
                            training_policy="lp-ft", policy_epochs=1, block_lr="block_1=0.5",
                            out=str(out), cache=str(tmp_path / "cache")), print_fn=print)
    every = pd.read_csv(out / "results_all.csv")
    assert sorted(every.groupby("rung")["rung_epochs"].first().tolist()) == [2, 3]
    first = every[every["rung"] == 0]
    assert sorted(set(first["policy"])) == ["block_1=frozen,block_2=tuned",
                                            "block_1=tuned,block_2=frozen"]
    assert len(first) == 4 and (first["epochs_done"] == 2).all()
    final = pd.read_csv(out / "results.csv")
    assert len(final) == 3 * 2 and (final["epochs_done"] == 3).all()
    assert {"scratch", "block_1=tuned,block_2=tuned"} <= set(final["policy"])
    # The configuration that went on is the one with the better mean validation at rung 0.
    means = first.groupby("policy")["val_accuracy"].mean()
    assert means.idxmax() in set(final["policy"])
    report = (out / "report.md").read_text()
    assert "successive halving (eta 2), rungs of [2, 3] epochs: 10 trials" in report
    assert "lp-ft (k = 1, fine-tuning factor 0.1); block learning rates: block_1=0.5" in report
