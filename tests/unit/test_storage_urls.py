"""tpi_core.storage's URL helpers every bucket storage uses: bucket_url, check_bucket and
split_url."""

from __future__ import annotations

import pytest

from tpi_core.errors import UsageError
from tpi_core.storage import bucket_url, check_bucket, split_url

ALLOWED = ("region", "tagging")


def test_bucket_url_splits_and_takes_the_named_query_options() -> None:
    assert bucket_url("s3://b/p/q?tagging=a%3D1&other=x", "s3", "S3", {}, ALLOWED,
                      ("tagging",)) == ("b", "/p/q", {"tagging": "a=1"})


def test_a_keyword_option_wins_over_the_query() -> None:
    _, _, options = bucket_url("s3://b?tagging=a", "s3", "S3", {"tagging": "k"}, ALLOWED,
                               ("tagging",))
    assert options == {"tagging": "k"}


@pytest.mark.parametrize("url", ["gs://b/p", "s3:///p", "b/p"])
def test_another_scheme_or_no_bucket_is_refused(url: str) -> None:
    with pytest.raises(UsageError, match="s3://bucket/prefix"):
        bucket_url(url, "s3", "S3", {}, ALLOWED)


def test_an_unknown_option_is_named_with_the_allowed_ones() -> None:
    with pytest.raises(UsageError, match=r"unknown GCS storage option\(s\) color \(allowed"):
        bucket_url("gs://b", "gs", "GCS", {"color": "red"}, ("endpoint_url",))


@pytest.mark.parametrize("name", ["", "a/b", "a b"])
def test_check_bucket_refuses_names_no_cloud_takes(name: str) -> None:
    with pytest.raises(UsageError, match="invalid S3 bucket name"):
        check_bucket(name, "S3")


def test_split_url() -> None:
    assert split_url("s3://bucket/a/b/?tagging=x") == ("bucket", "a/b")
    assert split_url("gs://bucket") == ("bucket", "")
