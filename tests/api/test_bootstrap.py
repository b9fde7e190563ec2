"""The bootstrap admin token is never lost: its secret reaches the disk before its hash commits."""

from __future__ import annotations

from tenure.api.app import write_admin_token
from tenure.services.tokens import new_secret
from tenure.services.runtime import Runtime


def test_first_start_writes_a_private_admin_token(db_url, tmp_path):
    with Runtime.open(db_url) as rt:
        path = write_admin_token(rt, tmp_path)
        assert path is not None and path.stat().st_mode & 0o777 == 0o600
        assert rt.tokens.authenticate(path.read_text().strip()).is_admin
        assert write_admin_token(rt, tmp_path) is None  # only on the first start


def test_crash_between_commit_and_rename_is_finished_at_next_start(db_url, tmp_path):
    with Runtime.open(db_url) as rt:
        secret = new_secret()
        (tmp_path / "admin.token.pending").write_text(secret + "\n")
        rt.run(rt.tokens.create_op(role="admin", secret=secret))  # committed; then the "crash"
    with Runtime.open(db_url) as rt:
        path = write_admin_token(rt, tmp_path)
        assert path is not None and path.read_text().strip() == secret
        assert not (tmp_path / "admin.token.pending").exists()


def test_crash_before_commit_starts_the_bootstrap_again(db_url, tmp_path):
    (tmp_path / "admin.token.pending").write_text(new_secret() + "\n")  # written, never committed
    with Runtime.open(db_url) as rt:
        path = write_admin_token(rt, tmp_path)
        assert path is not None
        assert rt.tokens.authenticate(path.read_text().strip()).is_admin
