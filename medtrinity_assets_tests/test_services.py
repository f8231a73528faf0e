"""The service fixtures' rule for a missing server: skip naming the Debian package, fail under
CI=true. Servers themselves are exercised by the e2e tests that use them."""

from __future__ import annotations

import pytest
import services


@pytest.mark.parametrize(
    ("start", "finder", "package"),
    [
        (lambda tmp: services.running_postgres(), "postgres_bin_dir", "postgresql"),
        (lambda tmp: services.running_redis(tmp / "redis"), "redis_binary", "redis-server"),
    ],
)
def test_a_missing_server_skips_naming_its_package_and_fails_under_ci(start, finder, package, tmp_path, monkeypatch):
    monkeypatch.setattr(services, finder, lambda: None)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match=f"Debian package {package}"):
        with start(tmp_path):
            pass
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=f"Debian package {package}.*CI=true"):
        with start(tmp_path):
            pass
