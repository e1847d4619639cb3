"""Image inputs and archives, without building: which files a build sends, what changes an image's key, and how
an archive names its image for containerd."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest

from localai_operator.devcluster import images, localai

ROOT = Path(__file__).resolve().parents[2]


def _context(tmp_path: Path, files: dict[str, str], ignore: str) -> Path:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    (tmp_path / ".dockerignore").write_text(ignore)
    return tmp_path


def test_the_operator_build_context_is_the_package_and_its_metadata_only() -> None:
    sent = {path for path, _ in images.context_files(ROOT)}
    assert "pyproject.toml" in sent
    assert "operator/localai_operator/cli.py" in sent
    assert not [
        p for p in sent if not (p.startswith("operator/") or p in {"pyproject.toml", "README.md", "LICENSE"})
    ]
    assert not [p for p in sent if "__pycache__" in p or ".egg-info" in p]


def test_a_negated_directory_pattern_re_includes_everything_under_it(tmp_path: Path) -> None:
    context = _context(
        tmp_path,
        {
            "keep/a.py": "",
            "keep/sub/b.py": "",
            "keep/sub/__pycache__/b.pyc": "",
            "drop/c.py": "",
            "top.txt": "",
        },
        "*\n!keep/\nkeep/**/__pycache__\n",
    )
    assert [path for path, _ in images.context_files(context)] == ["keep/a.py", "keep/sub/b.py"]


def test_editing_a_sent_file_changes_the_image_key(tmp_path: Path) -> None:
    context = _context(tmp_path, {"Containerfile": "FROM x\n", "app.py": "one"}, "*\n!app.py\n")
    recipe = images.Recipe("app", context / "Containerfile", context)
    before = images.Recipe.inputs(recipe)
    (context / "app.py").write_text("two")
    assert images.Recipe.inputs(recipe) != before


def test_editing_an_ignored_file_keeps_the_image_key(tmp_path: Path) -> None:
    context = _context(
        tmp_path, {"Containerfile": "FROM x\n", "app.py": "one", "notes.md": "a"}, "*\n!app.py\n"
    )
    recipe = images.Recipe("app", context / "Containerfile", context)
    before = recipe.inputs()
    (context / "notes.md").write_text("b")
    assert recipe.inputs() == before


def test_changing_a_base_package_changes_every_image_built_on_it(monkeypatch: pytest.MonkeyPatch) -> None:
    builder = images._Builder(Path("/nonexistent"), {})
    recipe = images.recipes()["operator"]
    before = builder.planned(recipe).tag
    monkeypatch.setitem(images.BASES, "python", images.Base("python", (*images.RUNTIME_PACKAGES, "curl")))
    assert builder.planned(recipe).tag != before


def test_an_archive_names_its_image_the_way_containerd_imports_it(tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    (layout / "blobs" / "sha256").mkdir(parents=True)
    (layout / "blobs" / "sha256" / "ab").write_text("{}")
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    manifest = {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "sha256:ab", "size": 2}
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [manifest]}))
    archive = tmp_path / "image.oci.tar"
    images.write_oci_archive(layout, archive, "docker.io/library/app:dev-1", "dev-1")
    with tarfile.open(archive) as tar:
        assert tar.getnames()[:2] == ["oci-layout", "index.json"]
        index_file = tar.extractfile("index.json")
        assert index_file is not None
        index = json.load(index_file)
    assert index["manifests"][0]["annotations"] == {
        "io.containerd.image.name": "docker.io/library/app:dev-1",
        "org.opencontainers.image.ref.name": "dev-1",
    }


def test_an_image_reference_is_what_kubernetes_resolves_to_the_imported_name() -> None:
    image = images.Image("localai-operator", "dev-0123456789ab", Path("/x.oci.tar"))
    assert image.ref == "localai-operator:dev-0123456789ab"
    assert image.containerd_ref == "docker.io/library/localai-operator:dev-0123456789ab"


def test_changing_a_pinned_localai_source_changes_the_localai_images_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    builder = images._Builder(Path("/nonexistent"), {})
    before = builder.planned(images.recipes()["localai"]).tag
    monkeypatch.setattr(localai, "PINS", (*localai.PINS, "llama-cpp-python 0.3.36"))
    assert builder.planned(images.recipes()["localai"]).tag != before


def test_the_localai_sources_default_to_the_shared_archives_beside_the_checkout_and_git_is_one_variable() -> (
    None
):
    assert localai.source_setting({}) == str(ROOT.parent / "shared" / "localai-src")
    assert localai.source_setting({localai.SOURCE_ENV: "git"}) == localai.GIT_SOURCE


def test_a_missing_source_archive_directory_names_the_variable_that_points_elsewhere(tmp_path: Path) -> None:
    env = {localai.SOURCE_ENV: str(tmp_path / "nowhere")}
    build = localai.Build(tmp_path / "cache", env, lambda argv, volumes: None, "base")
    with pytest.raises(localai.LocalAIBuildError, match=localai.SOURCE_ENV):
        build._sources()
