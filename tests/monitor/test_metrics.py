"""metrics.jsonl is trimmed back to the resumed step, torn last lines included."""


from pretrain.monitor.metrics import MetricsFile, format_record, read_metrics


def test_truncate_after_drops_later_steps_and_a_torn_line(tmp_path):
    log = MetricsFile(tmp_path / "metrics.jsonl")
    for step in range(1, 6):
        log.append({"step": step, "loss": 1.0 / step})
    with open(log.path, "a") as f:
        f.write('{"step": 6, "lo')  # the process was killed mid-write
    log.truncate_after(3)
    assert [r["step"] for r in read_metrics(log.path)] == [1, 2, 3]
    log.append({"step": 4, "loss": 0.5})
    assert read_metrics(log.path)[-1] == {"step": 4, "loss": 0.5}


def test_truncate_of_a_missing_file_is_a_no_op(tmp_path):
    MetricsFile(tmp_path / "metrics.jsonl").truncate_after(3)
    assert not (tmp_path / "metrics.jsonl").exists()


def test_format_record_is_one_compact_line_with_an_eta():
    record = {"step": 7, "loss": 2.345678, "consumed_samples": 112, "time_data": 0.1, "skipped_steps": 0,
              "eta_seconds": 3725.0}
    assert format_record(record) == "step 7 | loss 2.346 | eta 1h02m"
    assert format_record({"step": 8, "skipped_steps": 2, "eta_seconds": 75}) == "step 8 | skipped_steps 2 | eta 1m15s"
