"""``dockworker clusters ...``: clusters of runners that reach only the API, with their own
tokens (``/2/clusters``), with the project token of iron.json (or an admin token in it)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from .. import ids
from ..errors import ClientError
from . import output
from .common import ConfigOpt, JsonOpt, command_group
from .config import ClientConfig
from .http import Http
from .output import Col

clusters_app = command_group(
    "Clusters of runners that reach only the API: create, list, show, update, share, tokens, keys.",
    no_args_is_help=True,
)

CLUSTER_KEYS = (
    "id",
    "name",
    "description",
    "project_id",
    "memory_mb",
    "encrypted_payloads",
    "token_active",
    "token_created_at",
    "shared_to",
    "created_at",
    "updated_at",
)
ClusterArg = Annotated[str, typer.Argument(help="The cluster's id, or its name")]
PublicKeyOpt = Annotated[
    Path | None,
    typer.Option(help="PEM public key: payloads queued for the cluster must then be encrypted for it"),
]


def register(app: typer.Typer) -> None:
    app.add_typer(clusters_app, name="clusters")


class Clusters:
    def __init__(self, config: Path | None) -> None:
        loaded = ClientConfig.load(config)
        self.http = Http(loaded.base_url, loaded.token)
        self.project_id = loaded.project_id

    def list(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = self.http.field("GET", "/2/clusters", "clusters")
        return found

    def resolve(self, name_or_id: str) -> str:
        """The id of the cluster of that id or name, among those the token sees."""
        listed = self.list()
        for cluster in listed:
            if cluster["id"] == name_or_id:
                return name_or_id
        named = [c for c in listed if c["name"] == name_or_id]
        if len(named) == 1:
            return str(named[0]["id"])
        if len(named) > 1:
            raise ClientError(f"several clusters are named {name_or_id!r}: give the id")
        raise ClientError(f"cluster {name_or_id!r} not found (see 'dockworker clusters list')")

    def get(self, name_or_id: str) -> dict[str, Any]:
        found: dict[str, Any] = self.http.field("GET", f"/2/clusters/{self.resolve(name_or_id)}", "cluster")
        return found

    def call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        found: dict[str, Any] = self.http.field(method, path, "cluster", **kwargs)
        return found


def cluster_id_for(config: Path | None, cluster: str) -> str:
    """A task's ``cluster`` as given, or the id of the visible cluster of that name."""
    if cluster == "default" or ids.is_id(cluster):
        return cluster
    clusters = Clusters(config)
    named = [c for c in clusters.list() if c["name"] == cluster]
    return str(named[0]["id"]) if len(named) == 1 else cluster


def encrypt_for(config: Path | None, cluster: str, payload: str) -> str:
    """The payload encrypted with the cluster's public key (``queue --encrypt``)."""
    from .. import payload_crypto

    found = Clusters(config).get(cluster)
    if not found.get("public_key"):
        raise ClientError(f"cluster {found['name']!r} has no public key: there is nothing to encrypt for")
    return payload_crypto.encrypt(payload, found["public_key"])


def _read_key(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ClientError(f"cannot read {path}: {exc}") from None


def _show(cluster: dict[str, Any], as_json: bool) -> None:
    output.fields(cluster, CLUSTER_KEYS, as_json=as_json)


def _show_with_token(cluster: dict[str, Any], as_json: bool, what: str) -> None:
    if as_json:
        output.print_json(cluster)
        return
    _show(cluster, as_json=False)
    output.line(f"token: {cluster['token']}")
    output.note(
        f"{what}: the token is shown this once (the service keeps only its digest). Start the"
        f" cluster's runners with: dockworker runner --api URL --cluster-id {cluster['id']}"
        " --cluster-token TOKEN"
    )


@clusters_app.command("list")
def list_clusters(config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """The project's clusters and those shared with it.

    Fields: id, name, memory_mb, encrypted payloads, token active, owner."""
    columns = [
        Col("id", lambda c: c["id"]),
        Col("name", lambda c: c["name"], flex=True),
        Col("memory_mb", lambda c: c["memory_mb"]),
        Col("encrypted", lambda c: "yes" if c["encrypted_payloads"] else "no"),
        Col("token", lambda c: "active" if c["token_active"] else "revoked"),
        Col("owner", lambda c: "yes" if c["owner"] else "shared"),
    ]
    output.table(columns, Clusters(config).list(), as_json=as_json)


@clusters_app.command("create")
def create(
    name: Annotated[str, typer.Argument(help="The cluster's name (unique in the project)")],
    memory_mb: Annotated[int | None, typer.Option(min=16, help="Memory per task (default 512)")] = None,
    description: Annotated[str | None, typer.Option()] = None,
    public_key: PublicKeyOpt = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Create a cluster; prints its token, this once."""
    clusters = Clusters(config)
    body = {
        "name": name,
        "memory_mb": memory_mb,
        "description": description,
        "public_key": _read_key(public_key),
    }
    made = clusters.call("POST", "/2/clusters", json_body={k: v for k, v in body.items() if v is not None})
    _show_with_token(made, as_json, f"Created cluster {made['name']}")


@clusters_app.command("show")
def show(cluster: ClusterArg, config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Show a cluster (and its public key, if it has one)."""
    found = Clusters(config).get(cluster)
    _show(found, as_json)
    if not as_json and found.get("public_key"):
        output.line(found["public_key"].rstrip())


@clusters_app.command("update")
def update(
    cluster: ClusterArg,
    name: Annotated[str | None, typer.Option(help="A new name")] = None,
    memory_mb: Annotated[int | None, typer.Option(min=16)] = None,
    description: Annotated[str | None, typer.Option()] = None,
    public_key: PublicKeyOpt = None,
    no_public_key: Annotated[
        bool, typer.Option("--no-public-key", help="Remove the key: payloads may be clear again")
    ] = False,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Change a cluster (its owner only)."""
    if public_key is not None and no_public_key:
        raise ClientError("give --public-key or --no-public-key, not both")
    body: dict[str, Any] = {"name": name, "memory_mb": memory_mb, "description": description}
    body["public_key"] = "" if no_public_key else _read_key(public_key)
    body = {k: v for k, v in body.items() if v is not None}
    if not body:
        raise ClientError("nothing to change: give --name, --memory-mb, --description or a key option")
    clusters = Clusters(config)
    _show(clusters.call("PUT", f"/2/clusters/{clusters.resolve(cluster)}", json_body=body), as_json)


@clusters_app.command("delete")
def delete(cluster: ClusterArg, config: ConfigOpt = None) -> None:
    """Delete a cluster (refused while tasks or schedules use it)."""
    clusters = Clusters(config)
    cluster_id = clusters.resolve(cluster)
    clusters.http.json("DELETE", f"/2/clusters/{cluster_id}")
    output.note(f"Deleted cluster {cluster_id}")


@clusters_app.command("share")
def share(cluster: ClusterArg, project_id: str, config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Let another project queue tasks to the cluster."""
    clusters = Clusters(config)
    path = f"/2/clusters/{clusters.resolve(cluster)}/share"
    _show(clusters.call("POST", path, json_body={"project_id": project_id}), as_json)


@clusters_app.command("unshare")
def unshare(cluster: ClusterArg, project_id: str, config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Stop sharing the cluster with a project (its queued tasks still run)."""
    clusters = Clusters(config)
    _show(clusters.call("POST", f"/2/clusters/{clusters.resolve(cluster)}/unshare/{project_id}"), as_json)


@clusters_app.command("rotate-token")
def rotate_token(cluster: ClusterArg, config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """A new token for the cluster's runners; the old one is refused from now on."""
    clusters = Clusters(config)
    rotated = clusters.call("POST", f"/2/clusters/{clusters.resolve(cluster)}/credentials")
    _show_with_token(rotated, as_json, "Rotated the token (runners still on the old one stop)")


@clusters_app.command("revoke-token")
def revoke_token(cluster: ClusterArg, config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """No runner may connect until a new token is made (rotate-token)."""
    clusters = Clusters(config)
    _show(clusters.call("DELETE", f"/2/clusters/{clusters.resolve(cluster)}/credentials"), as_json)


@clusters_app.command("stats")
def stats(cluster: ClusterArg, config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """The cluster's runners, slots and tasks queued and running."""
    clusters = Clusters(config)
    found: dict[str, Any] = clusters.http.field(
        "GET", f"/2/clusters/{clusters.resolve(cluster)}/stats", "cluster"
    )
    if as_json:
        output.print_json(found)
        return
    output.fields(found, ("id", "queued", "running", "runners_total", "runners_available"))
    columns = [
        Col("runner", lambda r: r["id"], flex=True),
        Col("host", lambda r: r["host"]),
        Col("running", lambda r: f"{r['running']}/{r['slots']}"),
        Col("last heartbeat", lambda r: r["last_heartbeat"]),
    ]
    if found["runners"]:
        output.table(columns, found["runners"])


@clusters_app.command("keygen")
def keygen(
    prefix: Annotated[Path, typer.Argument(help="Writes PREFIX.pem (private, 0600) and PREFIX.pub")],
    bits: Annotated[int, typer.Option(min=2048, max=8192)] = 3072,
) -> None:
    """Make an RSA key pair for end-to-end payload encryption: give PREFIX.pub to the cluster
    (--public-key), PREFIX.pem to its runners (--decryption-key-file)."""
    from .. import payload_crypto

    private_path, public_path = prefix.with_suffix(".pem"), prefix.with_suffix(".pub")
    for path in (private_path, public_path):
        if path.exists():
            raise ClientError(f"{path} exists: choose another prefix")
    private, public = payload_crypto.generate_key_pair(bits)
    private_path.touch(mode=0o600)
    private_path.write_text(private)
    public_path.write_text(public)
    output.note(f"Wrote {private_path} (keep it on the runners only) and {public_path}")
