"""``deeplesion-lab labels``: the label store from the command line.

Every action works on a run directory (``--run``): its store is ``RUN_DIR/labels.sqlite``, or a
PostgreSQL database with ``--db postgresql://...``; the run's manifest is the dataset the labels
belong to. Writing actions create the store, and fill it from ``RUN_DIR/pseudo_labels.parquet``,
when it does not exist yet. Bad input exits with code 2 and a one-line message; nothing is
written.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

_FORMATS = ("csv", "parquet", "coco", "dl_info")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "labels",
        help="label store: relabel, undo/redo, history, snapshots, exports",
        description=(
            "Corrections of a run's labels, kept in its label store (RUN_DIR/labels.sqlite, or "
            "PostgreSQL with --db). Each change is one atomic event with its user, tool and time."
        ),
    )
    acts = p.add_subparsers(dest="labels_action", metavar="ACTION", required=True)

    def action(name: str, help_text: str, func, *, write: bool = False, user: bool = False):
        a = acts.add_parser(name, help=help_text, description=help_text)
        a.add_argument("--run", type=Path, required=True, help="the run directory")
        a.add_argument(
            "--db",
            default=None,
            help="postgresql://user@host:port/dbname (default: RUN_DIR/labels.sqlite)",
        )
        a.add_argument("--namespace", default=None, help="PostgreSQL schema of the store")
        if user:
            a.add_argument("--user", required=True, help="your name (recorded with the change)")
        if write:
            a.add_argument("--tool", default="cli", help="recorded with the change (default cli)")
        a.set_defaults(func=func, _write=write)
        return a

    a = action("use", "make the store at --db (a PostgreSQL server) the run's store for every "
               "tool (recorded in run.json; --local: back to RUN_DIR/labels.sqlite)", run_use)
    a.add_argument("--local", action="store_true",
                   help="forget the recorded server: RUN_DIR/labels.sqlite again")
    a.add_argument("--copy-local", action="store_true",
                   help="copy RUN_DIR/labels.sqlite (every event: corrections, history, undo, "
                        "snapshots, tags, views) into the server's store, which must be empty")
    a.add_argument("--fresh", action="store_true",
                   help="start an empty server store from the pseudo-labels even though "
                        "RUN_DIR/labels.sqlite holds corrections (they stay in that file)")

    a = action("init", "load RUN_DIR/pseudo_labels.parquet into the store", run_init)
    a.add_argument("--pseudo", type=Path, default=None,
                   help="pseudo-label parquet (default RUN_DIR/pseudo_labels.parquet)")
    a.add_argument("--run-id", default=None, help="run id (default: the run folder's name)")
    a.add_argument("--user", default="pipeline", help="recorded with the event")

    a = action("relabel", "set the label of lesions (prints the event id)", run_relabel,
               write=True, user=True)
    _lesion_args(a)
    a.add_argument("--label", required=True, help="class name (see `labels classes`)")
    a.add_argument("--comment", default=None)

    a = action("relabel-cluster", "set the label of every lesion of a cluster",
               run_relabel_cluster, write=True, user=True)
    a.add_argument("--cluster", type=int, required=True)
    a.add_argument("--label", required=True)
    a.add_argument("--comment", default=None)

    a = action("merge-clusters", "merge clusters into one", run_merge, write=True, user=True)
    a.add_argument("--clusters", required=True, help="cluster ids, comma-separated")
    a.add_argument("--into", type=int, default=None, help="the cluster kept (default smallest)")
    a.add_argument("--label", default=None, help="also relabel every merged lesion")
    a.add_argument("--comment", default=None)

    a = action("split-cluster", "move lesions of a cluster into a new cluster", run_split,
               write=True, user=True)
    a.add_argument("--cluster", type=int, required=True)
    _lesion_args(a)
    a.add_argument("--label", default=None, help="also relabel the moved lesions")
    a.add_argument("--comment", default=None)

    a = action("rename-cluster", "give a cluster a display name", run_rename, write=True,
               user=True)
    a.add_argument("--cluster", type=int, required=True)
    a.add_argument("--name", required=True)

    a = action("mark", "mark lesions as 'not a lesion' or 'unsure'", run_mark, write=True,
               user=True)
    _lesion_args(a)
    a.add_argument("--as", dest="mark_as", choices=("not-lesion", "unsure"), required=True)
    a.add_argument("--comment", default=None)

    a = action("comment", "comment on lesions (no label change)", run_comment, write=True,
               user=True)
    _lesion_args(a)
    a.add_argument("--text", required=True)

    for name, func, what in (
        ("undo", run_undo, "undo your last change"),
        ("redo", run_redo, "redo your last undone change"),
    ):
        a = action(name, f"{what} (prints the new event id)", func, write=True, user=True)
        a.add_argument(
            "--skip-conflicts",
            action="store_true",
            help="leave lesions that others changed since, and do the rest",
        )

    a = action("history", "events (default) or per-lesion history, newest first", run_history)
    a.add_argument("--lesion", default=None, help="one lesion's history")
    a.add_argument("--user", default=None, help="only this user's events")
    a.add_argument("--cluster", type=int, default=None, help="changes touching this cluster")
    a.add_argument("--limit", type=int, default=50, help="rows shown (default 50; 0 = all)")

    action("counts", "corrections per class", run_counts)
    action("classes", "the taxonomy (names, ids, colours)", run_classes)

    a = action("add-class", "add a class to the taxonomy", run_add_class, write=True, user=True)
    a.add_argument("--name", required=True)
    a.add_argument("--color", required=True, help="'#rrggbb' or a colour name")

    a = action("snapshot", "freeze the current labels under a name (prints the snapshot id)",
               run_snapshot, write=True, user=True)
    a.add_argument("--name", required=True)
    a.add_argument("--comment", default=None)

    action("snapshots", "list the snapshots", run_snapshots)

    a = action("export", "write the labels as CSV/parquet, COCO JSON or DL_info.csv", run_export)
    a.add_argument("--format", choices=_FORMATS, required=True)
    a.add_argument("--out", type=Path, required=True)
    a.add_argument("--snapshot", default=None, help="export a snapshot (id or name)")
    a.add_argument("--not-lesion", choices=("drop", "flag"), default="drop",
                   help="dl_info: rows labelled 'not a lesion' (default drop)")
    a.add_argument("--pseudo", choices=("none", "fill", "all"), default="none",
                   help="dl_info: which pseudo-labels replace the type (default none)")

    action("info", "where the store is, its dataset, run, counts", run_info)
    action("verify", "integrity check and replay of the log against the current labels",
           run_verify)


def _lesion_args(a: argparse.ArgumentParser) -> None:
    g = a.add_mutually_exclusive_group(required=True)
    g.add_argument("--lesions", help="lesion ids, comma-separated")
    g.add_argument("--lesions-file", type=Path,
                   help="a file with one lesion id per line ('-' = stdin)")


def _lesion_ids(args: argparse.Namespace) -> list[str]:
    from ..labels import LabelStoreError

    if args.lesions is not None:
        ids = [x.strip() for x in args.lesions.split(",")]
    else:
        src = args.lesions_file
        if str(src) == "-":
            text = sys.stdin.read()
        elif not src.is_file():
            raise LabelStoreError(f"{src}: lesion id file not found")
        else:
            text = src.read_text()
        ids = [x.strip() for x in text.splitlines()]
    ids = [x for x in ids if x]
    if not ids:
        raise LabelStoreError("empty selection: no lesion ids given; nothing was written")
    return ids


def _open(args: argparse.Namespace):
    """The run's store; writing actions create/fill it when missing, reading ones do not."""
    from ..labels import LabelStore, LabelStoreError
    from ..labels.store import run_label_store
    from ..run import RunDir

    run = RunDir(args.run)
    if not run.path.is_dir():
        raise LabelStoreError(f"{run.path}: run directory not found")
    run.info()  # a clear error when this is not a run directory
    if not args._write and not args.db and not run.label_db.is_file() \
            and run_label_store(run) is None:
        raise LabelStoreError(
            f"{run.label_db}: no label store yet; create it with "
            f"`deeplesion-lab labels init --run {run.path}`"
        )
    return LabelStore.for_run(run, db=args.db, namespace=args.namespace, init=args._write)


def run_use(args: argparse.Namespace) -> int:
    """``labels use``: record the team's PostgreSQL store in run.json (or forget it)."""
    import re

    from ..atomic import update_json
    from ..labels import LabelStore, LabelStoreError
    from ..labels.backend import DEFAULT_NAMESPACE, is_postgres_url
    from ..run import RunDir

    run = RunDir(args.run)
    run.info()
    if args.local:
        if args.db:
            raise LabelStoreError("labels use: give --db URL or --local, not both")
        update_json(run.run_json, {"label_store": None})
        print(f"{run.run_json}: the run's label store is {run.label_db} again")
        return 0
    if not args.db or not is_postgres_url(args.db):
        raise LabelStoreError("labels use: --db postgresql://USER@HOST:PORT/DBNAME is required "
                              "(or --local)")
    if re.search(r"://[^/@]*:[^/@]*@", args.db) or "password=" in args.db:
        raise LabelStoreError(
            "labels use: the URL holds a password, which run.json would keep in clear; give "
            "the URL without it and put the password in ~/.pgpass (or PGPASSFILE / "
            "PGSERVICEFILE) of each account that runs the tools"
        )
    if args.copy_local and args.fresh:
        raise LabelStoreError("labels use: give --copy-local or --fresh, not both")
    namespace = args.namespace or DEFAULT_NAMESPACE
    local_events = _local_corrections(run)
    if args.copy_local and local_events is None:
        raise LabelStoreError(f"labels use --copy-local: {run.label_db} not found, nothing to copy")
    # open it once: the server answers, the schema is a label store of this run's manifest
    with LabelStore.for_run(run, db=args.db, namespace=namespace, init=False) as store:
        empty = store.run_id is None and store.version() == 0
        if args.copy_local:
            from ..labels.copy import copy_store

            with LabelStore.open(run.label_db, dataset=run.load_manifest(),
                                 create=False) as local:
                counts = copy_store(local, store)
            print(f"copied {run.label_db} into {store.location}: {counts.get('batches', 0)} "
                  f"events, {counts.get('labels_current', 0)} current labels, "
                  f"{counts.get('snapshots', 0)} snapshots, {counts.get('tags_current', 0)} tags")
        elif empty and local_events and not args.fresh:
            raise LabelStoreError(
                f"labels use: {run.label_db} holds {local_events} correction event(s) and the "
                f"store at {store.location} is empty; nothing was changed. Give --copy-local to "
                "copy the file's whole store there (history, undo, snapshots), or --fresh to "
                "start the server's store from the pseudo-labels without them"
            )
    with LabelStore.for_run(run, db=args.db, namespace=namespace, init=True) as store:
        where = store.location
        n = len(store.current_labels())
    update_json(run.run_json, {"label_store": {"url": args.db, "namespace": namespace}})
    print(f"{run.run_json}: label store {where} ({n} lesions); every tool on this run "
          "(dashboard, notebooks, finetune, embed --labels-from-store) now uses it")
    if run.label_db.is_file():
        kept = "copied and kept" if args.copy_local else "kept"
        print(f"note: {run.label_db} is {kept} as it was and no longer used by this run"
              + (f" ({local_events} correction event(s) in it are not on the server)"
                 if local_events and not args.copy_local else ""))
    return 0


def _local_corrections(run) -> int | None:
    """Events other than pseudo-label loads in the run's own SQLite store (None: no file)."""
    from ..labels import LabelStore

    if not run.label_db.is_file():
        return None
    with LabelStore.open(run.label_db, create=False) as local:
        return int(local._db.scalar("SELECT COUNT(*) FROM batches WHERE op <> 'init'"))


def run_init(args: argparse.Namespace) -> int:
    from ..steps.labels import init_label_store

    init_label_store(args.run, pseudo=args.pseudo, run_id=args.run_id, user=args.user,
                     db=args.db, namespace=args.namespace)
    return 0


def _print_event(event_id: int) -> int:
    print(event_id)
    return 0


def run_relabel(args: argparse.Namespace) -> int:
    ids = _lesion_ids(args)
    with _open(args) as store:
        return _print_event(store.relabel(ids, args.label, args.user, tool=args.tool,
                                          comment=args.comment))


def run_relabel_cluster(args: argparse.Namespace) -> int:
    with _open(args) as store:
        return _print_event(store.relabel_cluster(args.cluster, args.label, args.user,
                                                  tool=args.tool, comment=args.comment))


def _int_list(text: str, what: str) -> list[int]:
    from ..labels import LabelStoreError

    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise LabelStoreError(f"{what}: expected comma-separated integers, got {text!r}") from None


def run_merge(args: argparse.Namespace) -> int:
    clusters = _int_list(args.clusters, "--clusters")
    with _open(args) as store:
        return _print_event(store.merge_clusters(clusters, args.user, into=args.into,
                                                 label=args.label, tool=args.tool,
                                                 comment=args.comment))


def run_split(args: argparse.Namespace) -> int:
    ids = _lesion_ids(args)
    with _open(args) as store:
        new = store.split_cluster(args.cluster, ids, args.user, label=args.label,
                                  tool=args.tool, comment=args.comment)
        print(f"{store.last_event_id}\tnew cluster {new}")
    return 0


def run_rename(args: argparse.Namespace) -> int:
    with _open(args) as store:
        return _print_event(store.rename_cluster(args.cluster, args.name, args.user,
                                                 tool=args.tool))


def run_mark(args: argparse.Namespace) -> int:
    ids = _lesion_ids(args)
    with _open(args) as store:
        fn = store.mark_not_lesion if args.mark_as == "not-lesion" else store.mark_unsure
        return _print_event(fn(ids, args.user, tool=args.tool, comment=args.comment))


def run_comment(args: argparse.Namespace) -> int:
    ids = _lesion_ids(args)
    with _open(args) as store:
        return _print_event(store.comment(ids, args.text, args.user, tool=args.tool))


def _undo_redo(args: argparse.Namespace, redo: bool) -> int:
    with _open(args) as store:
        fn = store.redo if redo else store.undo
        res = fn(args.user, tool=args.tool, skip_conflicts=args.skip_conflicts)
        print(res.event_id)
        what = "redid undo" if redo else "undid"
        note = f"{what} event {res.target_event_id} ({res.target_op}): {len(res.lesion_ids)} lesions"
        if len(res.conflicts):
            note += f"; {len(res.conflicts)} skipped (changed by others since)"
        print(note, file=sys.stderr)
    return 0


def run_undo(args: argparse.Namespace) -> int:
    return _undo_redo(args, redo=False)


def run_redo(args: argparse.Namespace) -> int:
    return _undo_redo(args, redo=True)


def _show(df, limit: int | None = None) -> None:
    import pandas as pd

    if limit:
        df = df.head(limit)
    if len(df) == 0:
        print("(none)")
        return
    with pd.option_context("display.max_colwidth", 60, "display.width", 200):
        print(df.to_string(index=False))


def run_history(args: argparse.Namespace) -> int:
    limit = args.limit or None
    with _open(args) as store:
        if args.lesion is None and args.cluster is None:
            ev = store.events(user=args.user, limit=limit)
            cols = ["event_id", "created_at", "user", "tool", "op", "n_changes", "detail",
                    "comment"]
            ev["created_at"] = ev["created_at"].str.slice(0, 19)
            ev["comment"] = ev["comment"].fillna("")
            _show(ev[cols])
        else:
            h = store.history(lesion_id=args.lesion, user=args.user, cluster=args.cluster,
                              limit=limit)
            h["created_at"] = h["created_at"].str.slice(0, 19)
            h["comment"] = h["comment"].fillna("")
            cols = ["event_id", "created_at", "user", "op", "lesion_id", "label_before",
                    "label_after", "cluster_before", "cluster_after", "undone", "comment",
                    "detail"]
            _show(h[cols])
    return 0


def run_counts(args: argparse.Namespace) -> int:
    with _open(args) as store:
        _show(store.correction_counts())
    return 0


def run_classes(args: argparse.Namespace) -> int:
    with _open(args) as store:
        _show(store.classes()[["class_id", "name", "color", "kind", "created_by"]])
    return 0


def run_add_class(args: argparse.Namespace) -> int:
    with _open(args) as store:
        c = store.add_class(args.name, args.color, args.user, tool=args.tool)
        print(f"added class {c.name!r} (id {c.class_id}, {c.color}) in event "
              f"{store.last_event_id}")
    return 0


def run_snapshot(args: argparse.Namespace) -> int:
    with _open(args) as store:
        sid = store.snapshot(args.name, args.user, comment=args.comment)
        print(sid)
    return 0


def run_snapshots(args: argparse.Namespace) -> int:
    with _open(args) as store:
        _show(store.list_snapshots())
    return 0


def run_export(args: argparse.Namespace) -> int:
    from ..labels import LabelStoreError
    from ..run import RunDir

    out: Path = args.out
    snap = args.snapshot
    with _open(args) as store:
        if args.format in ("csv", "parquet"):
            if out.suffix != f".{args.format}":
                raise LabelStoreError(f"{out}: --format {args.format} writes a .{args.format} file")
            path = store.export_labels(out, snapshot=snap)
        else:
            manifest = RunDir(args.run).load_manifest()
            if args.format == "coco":
                path = store.export_coco(out, manifest, snapshot=snap)
            else:
                path = store.export_dl_info(out, manifest, snapshot=snap,
                                            not_lesion=args.not_lesion, pseudo=args.pseudo)
        print(f"wrote {path}")
    return 0


def run_info(args: argparse.Namespace) -> int:
    with _open(args) as store:
        for k, v in store.info().items():
            print(f"{k}: {v}")
    return 0


def run_verify(args: argparse.Namespace) -> int:
    with _open(args) as store:
        res = store.verify()
        print(f"integrity: {res['integrity']}")
        print(f"replay matches current labels: {res['replay_matches']}"
              + ("" if res["replay_matches"] else f" ({res['n_mismatched']} lesions differ: "
                 f"{', '.join(res['mismatched'])})"))
    ok = res["replay_matches"] and res["integrity"] in ("ok", "n/a")
    return 0 if ok else 1
