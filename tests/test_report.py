"""`LoadReport` as text: a long source path stays whole on its own line."""

from keras_blockreuse.report import LoadReport


def test_a_long_source_path_is_never_folded():
    path = "/data/experiments/" + "very_long_folder_name_" * 8 + "/blocks_020.blocks.h5"
    report = LoadReport(source=path, loaded={"block_1": "block_1"}, untouched=["dense_1"],
                        target_blocks=["block_1", "dense_1"], variables_loaded=2)
    lines = str(report).splitlines()
    assert len(path) > 110  # wider than the report
    assert lines[0] == f"load_blocks from {path}"
    assert lines[1].startswith("┏") and "block_1" in lines[4]


def test_sizes_below_a_megabyte_are_not_zero():
    """Found by a fresh-user test: a 42 kB file showed as `0.0 MB`; a small load read
    `0.00 MB`. Sizes are given in B, kB, MB or GB, whichever keeps them readable."""
    from keras_blockreuse.report import format_bytes

    assert [format_bytes(n) for n in (0, 999, 1000, 42_316, 999_949, 1_500_000, 2 * 10**9)] == [
        "0 B", "999 B", "1.0 kB", "42.3 kB", "999.9 kB", "1.5 MB", "2.0 GB"]
    report = LoadReport(source="s.blocks.h5", loaded={"head": "head"}, target_blocks=["head"],
                        variables_loaded=2, bytes_read=48)
    assert "2 variables, 48 B read, " in str(report)
