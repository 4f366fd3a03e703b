"""The backend registry: names from metadata, lazy import, install hints, broken plugins."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import tomllib
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest

from tpi_core import registry
from tpi_core.backend import Backend
from tpi_core.errors import BackendNotInstalled, PluginError


@pytest.fixture
def fake_eps(monkeypatch, tmp_path):
    """Replace the installed entry points with hand-made ones pointing at temp modules."""
    (tmp_path / "good_plugin.py").write_text(textwrap.dedent("""
        from tpi_core.testing.fake import FakeBackend
        class GoodBackend(FakeBackend):
            NAME = "good"
    """))
    (tmp_path / "broken_plugin.py").write_text("raise RuntimeError('boom at import')\n")
    (tmp_path / "wrong_plugin.py").write_text("class NotABackend: pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    eps = [EntryPoint("good", "good_plugin:GoodBackend", registry.BACKEND_GROUP),
           EntryPoint("broken", "broken_plugin:X", registry.BACKEND_GROUP),
           EntryPoint("wrong", "wrong_plugin:NotABackend", registry.BACKEND_GROUP),
           EntryPoint("missing", "no_such_module_xyz:B", registry.BACKEND_GROUP)]
    monkeypatch.setattr(registry, "entry_points",
                        lambda group: [e for e in eps if e.group == group])
    monkeypatch.setattr(registry, "KNOWN", {})
    registry.clear_cache()
    yield
    registry.clear_cache()


def test_names_come_from_metadata_without_import(fake_eps):
    assert registry.backend_names() == ["broken", "good", "missing", "wrong"]
    assert "good_plugin" not in sys.modules


def test_good_plugin_loads_and_is_a_backend(fake_eps):
    cls = registry.backend_class("good")
    assert issubclass(cls, Backend) and cls.NAME == "good"


def test_broken_plugin_is_reported_without_breaking_others(fake_eps):
    with pytest.raises(PluginError, match="broken.*boom at import"):
        registry.backend_class("broken")
    assert registry.backend_class("good").NAME == "good"


def test_wrong_base_class_is_refused(fake_eps):
    with pytest.raises(PluginError, match="not a Backend subclass"):
        registry.backend_class("wrong")


def test_unimportable_plugin_gives_install_hint(fake_eps):
    with pytest.raises(BackendNotInstalled, match="cannot be imported"):
        registry.backend_class("missing")


def test_unknown_first_party_backend_names_the_extra(fake_eps, monkeypatch):
    # the folder tpi was installed from, with the extra; never the 'tpi' of PyPI
    with pytest.raises(BackendNotInstalled, match=r"pip install '/[^']+\[aws\]'"):
        registry.backend_class("aws")
    with pytest.raises(BackendNotInstalled, match=r"pip install '/[^']+\[k8s\]'"):
        registry.backend_class("kubernetes")
    monkeypatch.setattr(registry, "_source", lambda: "")  # installed from a wheel
    with pytest.raises(BackendNotInstalled) as raised:
        registry.backend_class("aws")
    assert "'<tpi source folder>[aws]'" in str(raised.value)
    assert "the 'tpi' on PyPI is another project" in str(raised.value)


def test_planned_plugins_suggest_no_extra_that_does_not_exist(fake_eps, monkeypatch):
    monkeypatch.setitem(registry.PLANNED, "oci", "oracle")
    with pytest.raises(BackendNotInstalled, match="oracle plugin is not published yet") as raised:
        registry.backend_class("oci")
    assert "[" not in str(raised.value)
    for name in ("gcp", "azure", "az"):
        assert f"[{registry.FIRST_PARTY[name]}]" in registry.install_hint(name)
    assert "[gcp]" in registry.install_hint("gs", registry.STORAGE_GROUP)


def test_every_extra_an_install_hint_names_is_declared() -> None:
    root = Path(__file__).resolve().parents[2]
    extras = tomllib.loads((root / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    assert set(registry.FIRST_PARTY.values()) <= set(extras)


def test_tpi_plugins_filter(fake_eps, monkeypatch):
    monkeypatch.setenv("TPI_PLUGINS", "good")
    assert registry.backend_names() == ["good"]
    with pytest.raises(BackendNotInstalled):
        registry.backend_class("broken")


def test_trace_switch_prints_loads(fake_eps, monkeypatch, capsys):
    monkeypatch.setenv("TPI_TRACE_PLUGINS", "1")
    registry.backend_class("good")
    assert "loading plugin 'good'" in capsys.readouterr().err


def test_local_backend_is_registered_through_the_entry_point():
    registry.clear_cache()
    assert "local" in registry.backend_names()
    info = {p.name: p for p in registry.plugins()}["local"]
    assert info.distribution == "tpi"


def test_known_entry_points_are_the_ones_the_packages_declare():
    root = Path(__file__).resolve().parents[2]
    declared = {}
    for pyproject in [root / "pyproject.toml", *sorted(root.glob("plugins/*/pyproject.toml"))]:
        groups = tomllib.loads(pyproject.read_text())["project"]["entry-points"]
        for group in (registry.BACKEND_GROUP, registry.STORAGE_GROUP):
            declared.update({(group, name): value
                             for name, value in groups.get(group, {}).items()})
    assert registry.KNOWN == declared


def test_a_known_name_whose_package_is_missing_goes_through_entry_points(fake_eps, monkeypatch):
    monkeypatch.setattr(registry, "KNOWN",
                        {(registry.BACKEND_GROUP, "good"): "no_such_package_xyz.mod:Backend"})
    assert registry.backend_class("good").NAME == "good"


def test_known_names_load_without_reading_package_metadata():
    code = textwrap.dedent("""
        import sys
        from tpi_core.registry import backend_class, storage_class
        print(storage_class("s3").__name__, storage_class("file").__name__,
              backend_class("local").__name__)
        print("importlib.metadata" in sys.modules)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["S3Storage", "LocalStorage", "LocalBackend", "False"]


def test_aliases_are_canonical():
    assert registry.canonical("AZ") == "azure"
    assert registry.canonical("kubernetes") == "k8s"


SDK_MODULES = ("boto3", "botocore", "aioboto3", "aiobotocore", "kubernetes_asyncio",
               "google.cloud", "gcloud", "azure")


def _imported_after(argv: list[str], cwd) -> set[str]:
    code = textwrap.dedent(f"""
        import sys
        from tpi_core.cli import main
        try:
            main({argv!r})
        except SystemExit:
            pass
        print("MODULES", " ".join(sorted(sys.modules)))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=cwd, check=False).stdout
    line = next(l for l in out.splitlines() if l.startswith("MODULES"))
    return set(line.split()[1:])


def test_help_imports_no_cloud_sdk(tmp_path):
    modules = _imported_after(["--help"], tmp_path)
    assert "tpi_core.cli" in modules
    assert not [m for m in modules if m.startswith(SDK_MODULES)]
    assert "tpi_core.engine" not in modules


def test_status_of_a_local_task_imports_no_cloud_sdk(tmp_path):
    (tmp_path / "tasks.toml").write_text('[task.t]\ncloud = "local"\nscript = "true"\n')
    modules = _imported_after(["status", "t"], tmp_path)
    assert "tpi_core.engine" in modules
    assert not [m for m in modules if m.startswith(SDK_MODULES)]


def test_open_storage_lives_in_the_registry_and_storage_imports_no_registry():
    code = textwrap.dedent("""
        import sys
        import tpi_core.storage
        print("tpi_core.registry" in sys.modules)
        print(hasattr(tpi_core.storage, "open_storage"))  # one place, no cycle to break
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["False", "False"]
