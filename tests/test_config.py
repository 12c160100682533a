"""Configuration files: one line naming the file for each way a YAML mapping can be wrong."""

from __future__ import annotations

import pytest

from aiopt_lib.core.config import read_yaml_mapping
from aiopt_lib.core.errors import ConfigError


def test_a_mapping_is_read_and_an_empty_file_is_empty(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("name: x\nvalues: [1, 2]\n")
    assert read_yaml_mapping(good, "run configuration") == {"name": "x", "values": [1, 2]}
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert read_yaml_mapping(empty, "run configuration") == {}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, r"missing\.yaml: batch file not found"),
        ("a: [1, 2\n", r"bad\.yaml: not valid YAML"),
        ("- 1\n- 2\n", r"bad\.yaml: a batch file must be a mapping at the top level, got list"),
        (b"\xff\xfe", r"bad\.yaml: the batch file is not UTF-8 text"),
    ],
)
def test_each_problem_is_one_line_naming_the_file(tmp_path, content, message):
    path = tmp_path / ("missing.yaml" if content is None else "bad.yaml")
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError, match=message) as caught:
        read_yaml_mapping(path, "batch file")
    assert "\n" not in str(caught.value).split(": not valid YAML")[0]
