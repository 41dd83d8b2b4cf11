"""The rendered Envoy bootstrap: routes, ext_authz settings, and Envoy's own verdict on it."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import httpx2
import pytest

from callwarden.extauthz.envoy import (
    CONTEXT_SERVER_KEY,
    EXT_AUTHZ_CLUSTER,
    EXT_AUTHZ_FILTER,
    EXT_PROC_CLUSTER,
    EXT_PROC_FILTER,
    EnvoyProcess,
    EnvoyStartError,
    cluster_name,
    envoy_binary,
    render_bootstrap,
)
from callwarden.policy.model import McpServer
from tests.support.envoy import mcp_server

UPSTREAM = "http://127.0.0.1:9001"


def render(*servers: McpServer, **options: Any) -> dict[str, Any]:
    return render_bootstrap(servers, ext_authz="127.0.0.1:50051", **options)


def connection_manager(bootstrap: dict[str, Any]) -> dict[str, Any]:
    listener = bootstrap["static_resources"]["listeners"][0]
    config: dict[str, Any] = listener["filter_chains"][0]["filters"][0]["typed_config"]
    return config


def virtual_hosts(bootstrap: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {vhost["name"]: vhost for vhost in connection_manager(bootstrap)["route_config"]["virtual_hosts"]}


def mcp_routes(vhost: dict[str, Any]) -> list[dict[str, Any]]:
    """The MCP routes of a virtual host (not the metadata documents served beside them)."""
    return [route for route in vhost["routes"] if "direct_response" not in route]


def route_names(vhost: dict[str, Any]) -> list[str]:
    return [route["name"] for route in mcp_routes(vhost)]


def clusters(bootstrap: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {cluster["name"]: cluster for cluster in bootstrap["static_resources"]["clusters"]}


def ext_authz_config(bootstrap: dict[str, Any]) -> dict[str, Any]:
    [ext_authz] = [f for f in connection_manager(bootstrap)["http_filters"] if f["name"] == EXT_AUTHZ_FILTER]
    config: dict[str, Any] = ext_authz["typed_config"]
    return config


def test_ext_authz_runs_before_the_router() -> None:
    names = [f["name"] for f in connection_manager(render(mcp_server("a", UPSTREAM)))["http_filters"]]
    assert names == [EXT_AUTHZ_FILTER, "envoy.filters.http.router"]


def test_the_ext_proc_filter_sits_between_ext_authz_and_the_router_when_asked_for() -> None:
    names = [
        f["name"]
        for f in connection_manager(render(mcp_server("a", UPSTREAM), ext_proc="127.0.0.1:50051"))[
            "http_filters"
        ]
    ]
    assert names == [EXT_AUTHZ_FILTER, EXT_PROC_FILTER, "envoy.filters.http.router"]


def test_ext_proc_engages_only_for_requests_carrying_the_hook_mark() -> None:
    (wrapped,) = [
        f
        for f in connection_manager(render(mcp_server("a", UPSTREAM), ext_proc="127.0.0.1:1"))["http_filters"]
        if f["name"] == EXT_PROC_FILTER
    ]
    (matcher,) = wrapped["typed_config"]["xds_matcher"]["matcher_list"]["matchers"]
    unmarked = matcher["predicate"]["not_matcher"]["single_predicate"]
    assert unmarked["input"]["typed_config"]["header_name"] == "x-callwarden-hook"
    assert matcher["on_match"]["action"]["typed_config"]["@type"].endswith("SkipFilter")


def test_ext_proc_fails_closed_and_asks_for_bodies_only_by_override() -> None:
    (wrapped,) = [
        f
        for f in connection_manager(render(mcp_server("a", UPSTREAM), ext_proc="127.0.0.1:1"))["http_filters"]
        if f["name"] == EXT_PROC_FILTER
    ]
    processor = wrapped["typed_config"]["extension_config"]["typed_config"]
    assert (processor["failure_mode_allow"], processor["allow_mode_override"]) == (False, True)
    assert (
        processor["processing_mode"]["request_body_mode"]
        == processor["processing_mode"]["response_body_mode"]
        == "NONE"
    )
    assert processor["grpc_service"]["envoy_grpc"] == {"cluster_name": EXT_PROC_CLUSTER}
    assert EXT_PROC_CLUSTER in clusters(render(mcp_server("a", UPSTREAM), ext_proc="127.0.0.1:1"))


def test_ext_authz_fails_closed_with_503_and_the_exact_body() -> None:
    config = ext_authz_config(render(mcp_server("a", UPSTREAM)))
    assert config["failure_mode_allow"] is False
    assert config["status_on_error"] == {"code": 503}
    assert config["transport_api_version"] == "V3"
    assert config["include_peer_certificate"] is False
    assert config["with_request_body"]["allow_partial_message"] is False
    assert config["with_request_body"]["pack_as_bytes"] is True
    assert config["grpc_service"] == {"envoy_grpc": {"cluster_name": EXT_AUTHZ_CLUSTER}, "timeout": "1.0s"}


def test_the_ext_authz_cluster_speaks_http2_to_the_given_address() -> None:
    cluster = clusters(render(mcp_server("a", UPSTREAM)))[EXT_AUTHZ_CLUSTER]
    options = cluster["typed_extension_protocol_options"][
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    ]
    # More than 16 concurrent checks open another connection (spread over a pod's workers).
    assert options["explicit_http_config"] == {"http2_protocol_options": {"max_concurrent_streams": 16}}
    endpoint = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    assert endpoint["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 50051}


def test_each_route_names_its_server_and_carries_its_body_limit() -> None:
    finance = mcp_server(
        "finance", UPSTREAM, namespace="acme", path_prefix="/finance", max_request_bytes=4096
    )
    [route] = mcp_routes(virtual_hosts(render(finance))["*"])
    settings = route["typed_per_filter_config"][EXT_AUTHZ_FILTER]["check_settings"]
    assert settings["context_extensions"] == {CONTEXT_SERVER_KEY: "acme/finance"}
    assert settings["with_request_body"] == {
        "max_request_bytes": 4096,
        "allow_partial_message": False,
        "pack_as_bytes": True,
    }
    assert route["route"]["cluster"] == cluster_name(finance)


def test_each_servers_metadata_is_served_beside_its_route_without_ext_authz() -> None:
    finance = mcp_server("finance", UPSTREAM, hosts=["a.test"], dpop={"mode": "required"})
    [metadata] = [r for r in virtual_hosts(render(finance))["a.test"]["routes"] if "direct_response" in r]
    assert metadata["match"] == {"path": "/.well-known/oauth-protected-resource/mcp"}
    assert metadata["typed_per_filter_config"][EXT_AUTHZ_FILTER]["disabled"] is True
    document = json.loads(metadata["direct_response"]["body"]["inline_string"])
    assert document["resource"] == "https://finance.test/mcp"
    assert document["dpop_bound_access_tokens_required"] is True


def test_a_server_whose_metadata_is_published_elsewhere_gets_no_metadata_route() -> None:
    elsewhere = {"url": "https://docs.example/prm.json"}
    finance = mcp_server("finance", UPSTREAM, protectedResourceMetadata=elsewhere)
    assert all("direct_response" not in r for r in virtual_hosts(render(finance))["*"]["routes"])


def test_http_ext_authz_forwards_what_a_dpop_check_needs_and_returns_the_nonce() -> None:
    config = ext_authz_config(render(mcp_server("a", UPSTREAM), transport="http"))
    forwarded = [p.get("exact") for p in config["allowed_headers"]["patterns"]]
    assert {"dpop", "x-forwarded-proto"} <= set(forwarded)
    answers = config["http_service"]["authorization_response"]
    assert {"exact": "dpop-nonce"} in answers["allowed_client_headers"]["patterns"]
    assert {"exact": "dpop-nonce"} in answers["allowed_client_headers_on_success"]["patterns"]


def test_routes_have_no_overall_timeout_so_sse_streams_stay_open() -> None:
    [route] = mcp_routes(virtual_hosts(render(mcp_server("a", UPSTREAM)))["*"])
    assert route["route"]["timeout"] == "0s"
    assert route["route"]["idle_timeout"] == "3600s"
    assert connection_manager(render(mcp_server("a", UPSTREAM)))["stream_idle_timeout"] == "3600s"


@pytest.mark.parametrize(
    ("prefix", "match"),
    [
        ("/", {"prefix": "/"}),
        ("/mcp", {"path_separated_prefix": "/mcp"}),
        ("/mcp/", {"path_separated_prefix": "/mcp"}),
        ("/team/mcp", {"path_separated_prefix": "/team/mcp"}),
    ],
    ids=["root", "plain", "trailing-slash", "nested"],
)
def test_path_prefixes_match_whole_segments(prefix: str, match: dict[str, str]) -> None:
    [route] = mcp_routes(virtual_hosts(render(mcp_server("a", UPSTREAM, path_prefix=prefix)))["*"])
    assert route["match"] == match


def test_the_longest_prefix_is_tried_first() -> None:
    bootstrap = render(
        mcp_server("root", UPSTREAM, path_prefix="/"),
        mcp_server("short", UPSTREAM, path_prefix="/a"),
        mcp_server("long", UPSTREAM, path_prefix="/a/b"),
    )
    assert route_names(virtual_hosts(bootstrap)["*"]) == ["default/long", "default/short", "default/root"]


@pytest.mark.parametrize(
    ("host", "domains"),
    [
        ("mcp.example.com", ["mcp.example.com", "mcp.example.com:*"]),
        ("MCP.Example.COM", ["mcp.example.com", "mcp.example.com:*"]),
        ("mcp.example.com:8443", ["mcp.example.com:8443"]),
        ("*.example.com", ["*.example.com"]),
        ("[::1]", ["[::1]", "[::1]:*"]),
        ("[::1]:9000", ["[::1]:9000"]),
    ],
    ids=["name", "mixed-case", "with-port", "wildcard", "ipv6", "ipv6-port"],
)
def test_hosts_become_domains_matching_with_or_without_port(host: str, domains: list[str]) -> None:
    vhosts = virtual_hosts(render(mcp_server("a", UPSTREAM, hosts=[host])))
    assert vhosts[host.lower()]["domains"] == domains


def test_any_host_servers_are_routed_under_every_host_unless_a_host_specific_one_takes_the_path() -> None:
    bootstrap = render(
        mcp_server("specific", UPSTREAM, hosts=["a.test"], path_prefix="/mcp"),
        mcp_server("anywhere", UPSTREAM, path_prefix="/mcp"),
        mcp_server("other", UPSTREAM, path_prefix="/other"),
    )
    vhosts = virtual_hosts(bootstrap)
    assert route_names(vhosts["a.test"]) == ["default/other", "default/specific"]
    assert route_names(vhosts["*"]) == ["default/other", "default/anywhere"]


def test_servers_sharing_a_host_share_one_virtual_host() -> None:
    bootstrap = render(
        mcp_server("one", UPSTREAM, hosts=["a.test"], path_prefix="/one"),
        mcp_server("two", UPSTREAM, hosts=["A.test"], path_prefix="/two"),
    )
    assert sorted(route_names(virtual_hosts(bootstrap)["a.test"])) == ["default/one", "default/two"]


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ({"hosts": ["a.test"], "path_prefix": "/mcp"}, {"hosts": ["a.test"], "path_prefix": "/mcp"}),
        ({"path_prefix": "/mcp"}, {"path_prefix": "/mcp"}),
        ({"path_prefix": "/mcp"}, {"path_prefix": "/mcp/"}),
        ({"hosts": ["a.test"], "path_prefix": "/"}, {"hosts": ["A.TEST", "b.test"], "path_prefix": "/"}),
    ],
    ids=["same-host-same-prefix", "any-host-same-prefix", "trailing-slash", "host-case"],
)
def test_two_servers_claiming_the_same_route_are_refused(
    first: dict[str, Any], second: dict[str, Any]
) -> None:
    with pytest.raises(ValueError, match="both claim"):
        render(mcp_server("one", UPSTREAM, **first), mcp_server("two", UPSTREAM, **second))


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:9001/base", "http://127.0.0.1:9001/?q=1", "http://127.0.0.1:9001/#frag"],
    ids=["path", "query", "fragment"],
)
def test_an_upstream_url_with_more_than_host_and_port_is_refused(url: str) -> None:
    with pytest.raises(ValueError, match="scheme://host:port"):
        render(mcp_server("a", url))


def test_a_server_without_upstream_cannot_be_routed() -> None:
    server = mcp_server("a", UPSTREAM).model_copy(
        update={"spec": mcp_server("a", UPSTREAM).spec.model_copy(update={"upstream": None})}
    )
    with pytest.raises(ValueError, match=r"no spec\.upstream"):
        render(server)


@pytest.mark.parametrize(
    ("url", "kind", "port"),
    [
        ("http://127.0.0.1:9001", "STATIC", 9001),
        ("http://localhost:9001", "STRICT_DNS", 9001),
        ("http://mcp.internal", "STRICT_DNS", 80),
        ("http://[::1]:9001", "STATIC", 9001),
    ],
    ids=["ipv4", "name", "default-port", "ipv6"],
)
def test_upstream_clusters_resolve_by_address_kind(url: str, kind: str, port: int) -> None:
    cluster = clusters(render(mcp_server("a", url)))[cluster_name(mcp_server("a", url))]
    assert cluster["type"] == kind
    assert cluster.get("dns_lookup_family") == ("V4_PREFERRED" if kind == "STRICT_DNS" else None)
    address = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
    assert address["socket_address"]["port_value"] == port
    assert "transport_socket" not in cluster


def test_https_upstreams_verify_the_certificate_and_the_name() -> None:
    server = mcp_server("a", "https://mcp.example.com")
    cluster = clusters(render(server, ca_file="/etc/ca.pem"))[cluster_name(server)]
    tls = cluster["transport_socket"]["typed_config"]
    assert tls["sni"] == "mcp.example.com"
    validation = tls["common_tls_context"]["validation_context"]
    assert validation["trusted_ca"] == {"filename": "/etc/ca.pem"}
    assert validation["match_typed_subject_alt_names"] == [
        {"san_type": "DNS", "matcher": {"exact": "mcp.example.com"}}
    ]
    assert cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"][
        "socket_address"
    ] == {"address": "mcp.example.com", "port_value": 443}


def test_admin_listens_on_loopback_only() -> None:
    assert render(mcp_server("a", UPSTREAM))["admin"]["address"]["socket_address"]["address"] == "127.0.0.1"


@pytest.mark.integration
def test_envoy_accepts_a_bootstrap_using_every_feature(tmp_path: Path) -> None:
    bootstrap = render(
        mcp_server("root", "http://localhost:9000", path_prefix="/"),
        mcp_server("finance", "http://127.0.0.1:9001", namespace="acme", hosts=["a.test", "*.b.test"]),
        mcp_server("docs", "https://docs.example.com", hosts=["a.test:8443", "[::1]"], path_prefix="/docs/"),
        mcp_server("big", "http://[::1]:9003", path_prefix="/big", max_request_bytes=8_388_608),
        ext_proc="127.0.0.1:50052",
    )
    config = tmp_path / "bootstrap.json"
    config.write_text(json.dumps(bootstrap))
    result = subprocess.run(
        [envoy_binary(), "--mode", "validate", "--config-path", str(config), "--disable-hot-restart"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.integration
def test_several_envoys_run_side_by_side_on_their_own_ports(tmp_path: Path) -> None:
    bootstrap = render(mcp_server("a", UPSTREAM))
    with (
        EnvoyProcess(bootstrap, tmp_path / "one") as one,
        EnvoyProcess(bootstrap, tmp_path / "two", concurrency=2) as two,
    ):
        assert one.listener_port != two.listener_port
        assert one.admin_url != two.admin_url
        assert httpx2.get(two.url + "/elsewhere", trust_env=False).status_code == 404


@pytest.mark.integration
def test_a_bootstrap_envoy_rejects_fails_start_with_envoys_log(tmp_path: Path) -> None:
    bootstrap = render(mcp_server("a", UPSTREAM))
    bootstrap["static_resources"]["clusters"][0]["type"] = "NOT_A_TYPE"
    process = EnvoyProcess(bootstrap, tmp_path)
    with pytest.raises(EnvoyStartError, match="NOT_A_TYPE"):
        process.start()
