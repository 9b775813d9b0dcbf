"""The x-packgate-* headers a request context exposes, picked from the request's headers."""

from __future__ import annotations

from multidict import CIMultiDict, CIMultiDictProxy
from packgate_sidecar.app import PackgateHeaders


def test_only_packgate_headers_by_lower_cased_name_the_last_copy_winning() -> None:
    raw = CIMultiDict(
        [
            ("Authorization", "Bearer sk-client"),
            ("X-Packgate-Team", "search"),
            ("x-packgate-feature", "autocomplete"),
            ("X-PACKGATE-TEAM", "ads"),
            ("X-Packgate", "not a tag"),
        ]
    )
    headers = PackgateHeaders(CIMultiDictProxy(raw))
    assert dict(headers) == {"x-packgate-team": "ads", "x-packgate-feature": "autocomplete"}
    assert headers.get("x-packgate-team") == "ads"
    assert headers.get("authorization") is None and len(headers) == 2


def test_no_packgate_headers_reads_as_empty() -> None:
    headers = PackgateHeaders(CIMultiDictProxy(CIMultiDict([("Content-Type", "application/json")])))
    assert dict(headers) == {} and "x-packgate-team" not in headers
