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
