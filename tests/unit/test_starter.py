"""The starter manifest: valid as written, and never written over anything."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from inventories.manifest_model import load
from inventories.starter import StarterExists, main, write_starter


def test_starter_is_a_valid_manifest(tmp_path: Path) -> None:
    path = tmp_path / "manifest.json"
    assert main([str(path)]) == 0
    hosts = load(path)
    assert [h.host for h in hosts] == ["kvm-01", "kvm-02"]
    assert [v.name for h in hosts for v in h.vmspecs] == ["web01", "db01", "app01"]
    assert all(v["description"] for h in json.loads(path.read_text()) for v in h["vmspecs"])


def test_existing_file_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "manifest.json"
    path.write_text("mine\n")
    with pytest.raises(StarterExists, match="already exists"):
        write_starter(str(path))
    assert path.read_text() == "mine\n"
    assert main([str(path)]) == 1


def test_dangling_link_is_not_followed(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere.json"
    link = tmp_path / "manifest.json"
    os.symlink(target, link)
    with pytest.raises(StarterExists):
        write_starter(str(link))
    assert not target.exists()


def test_an_option_is_never_taken_for_a_file_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["--help"]) == 0
    assert main(["-x"]) == 2
    assert list(tmp_path.iterdir()) == []
