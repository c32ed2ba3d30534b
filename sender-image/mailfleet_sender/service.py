"""Lifecycle of one sender: start, reload, drain, stop. Protocol code lives elsewhere; this
module builds the parts from the config and keeps them in step.

- Start: the config must be valid (the pod fails fast otherwise); the spool is opened and its
  pending mail re-queued; no source IP is held until the operator grants leases.
- Reload: the config file is polled (mtime/inode/size of the resolved path, which catches the
  kubelet's `..data` symlink swap) together with the DKIM key files. A file that does not
  parse or validate keeps the last good config running; the error is logged, counted
  (`mailfleet_sender_config_valid` 0) and shown as `configError` in /v1/stats.
- Drain (`POST /v1/drain`): refuse new mail (SMTP 421, HTTP 503, /readyz 503 so Services stop
  routing submissions here), keep delivering what is queued. With `?handoff=true`: stop
  delivering, and hand the queue to the pool's other pods (`handoff`); a pod restarted with
  hand-off rows in its spool resumes that on its own.
- Undrain (`DELETE /v1/drain`): accept mail again and deliver the queue here. A hand-off in
  progress is cancelled: what no peer accepted returns to the local queue; a message whose
  last re-submission got no clear answer finishes its hand-off to that pod (it may hold it),
  so nothing is lost or doubled. The persisted draining state is cleared.
- Stop (SIGTERM): refuse new mail, give open SMTP transactions and outbound deliveries the
  grace period, then close the spool cleanly. Anything undelivered stays in the spool.
- Deliverability (`deliverability`): its hooks drive the engine; the suppression list
  replicates with the peers; the feedback port takes reports when `feedbackPort` is set.

Listeners bind `submission.listenAddress`, by default the pod's own address (POD_IP) when the
downward API gives it, so several pods sharing a host (the sandbox) never collide.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import logging
import os
import signal
import socket
import ssl
from collections.abc import Mapping, Sequence
from pathlib import Path

from aiohttp import web
from prometheus_client.core import GaugeMetricFamily

from mailfleet_sender import (
    clock,
    config,
    deliverability,
    dispatching,
    egress_counts,
    event_publishing,
    events,
    feedback_smtp,
    handoff,
    hooks,
    http_api,
    http_submission,
    intake,
    intake_workers,
    keys,
    kpi_keeping,
    leases,
    link_keys,
    metrics,
    mx,
    quarantining,
    reported_copies,
    spool,
    submission_smtp,
    suppression,
    tlsrpt_inbound,
    tlsrpt_sending,
    tlsrpt_store,
    tracking,
    units,
    wire,
)
from mailfleet_sender.metrics import gauge

log = logging.getLogger(__name__)

RELOAD_INTERVAL = 1.0
"""How often the config and key files are checked for changes."""
DEFAULT_GRACE = 25.0
"""Seconds SIGTERM waits for in-flight transactions (under Kubernetes' default 30 s)."""
MARK_RETRY = 1.0
"""Seconds between tries of marking the queue for hand-off when the spool refused."""
QUARANTINABLE = {
    "spool": spool.SPOOL_FILE,
    "suppression": deliverability.SUPPRESSION_FILE,
    "reports": reported_copies.FILE,
    "tlsrpt": tlsrpt_store.FILE,
}
"""The databases on the spool volume a corrupt copy of which is set aside at start."""
PAST_DAYS = 7
"""Quota days before today whose persisted counters `/v1/stats` reports (`days`)."""


@dataclasses.dataclass(frozen=True)
class Identity:
    """Who this pod is, from the downward API (POD_NAME, POD_IP)."""

    pod_name: str
    pod_ip: str | None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Identity:
        return cls(
            pod_name=env.get("POD_NAME") or socket.gethostname(),
            pod_ip=env.get("POD_IP") or None,
        )


def _file_stamp(path: Path) -> tuple[str, int, int, int] | None:
    try:
        real = os.path.realpath(path)
        st = os.stat(real)
    except OSError:
        return None
    return (real, st.st_ino, st.st_mtime_ns, st.st_size)


def _egress(epoch: int, activity: egress_counts.Count) -> wire.EgressStats:
    def at(wall: float | None) -> datetime.datetime | None:
        return None if wall is None else datetime.datetime.fromtimestamp(wall, datetime.UTC)

    return wire.EgressStats(
        epoch=epoch, connections=activity.connections, transactions=activity.transactions,
        messages=activity.messages, fenced=activity.fenced,
        last_connection_at=at(activity.last_connection_at),
        last_transaction_at=at(activity.last_transaction_at),
        last_message_at=at(activity.last_message_at),
    )


class Service:
    """One sender: `await start()`, then `await wait_stopped()`; `request_stop()` from signals."""

    def __init__(
        self,
        config_path: str | Path,
        *,
        env: Mapping[str, str] | None = None,
        clock_: clock.Clock | None = None,
        hook_set: hooks.Hooks | None = None,
        grace: float = DEFAULT_GRACE,
    ) -> None:
        self.config_path = Path(config_path)
        self.identity = Identity.from_env(os.environ if env is None else env)
        self.clock = clock_ or clock.Clock()
        self._custom_hooks = hook_set
        self.hooks = hook_set or hooks.Hooks()
        self.grace = grace
        self.metrics = metrics.Metrics()
        self.cfg, self.config_hash = config.load_config(self.config_path)
        self.config_error: str | None = None
        self._config_stamp = _file_stamp(self.config_path)
        self.metrics.config_valid.set(1)
        self.clock.day_length = units.duration_seconds(self.cfg.clock.day_length)
        self.clock.timezone = self.cfg.clock.timezone
        self.hostname = self.cfg.submission.hostname or self.identity.pod_name
        self.keys = keys.KeyStore()
        self.leases = leases.LeaseTable(self.clock)
        self.draining = False
        self.stopping = False
        self._stopped = asyncio.Event()
        self._stop_requested = asyncio.Event()
        self._runners: list[web.AppRunner] = []
        self._reload_task: asyncio.Task[None] | None = None
        self._api_keys: list[str] = []
        self._admin_token: str | None = None
        self.http_port = 0
        self.admin_port = 0
        self.public_port = 0
        self.feedback_port = 0
        self.spool: spool.Spool
        self.kpis: kpi_keeping.KpiKeeper
        """Campaign KPIs: `self.kpis.observe(event)` for every delivery event."""
        self.quarantined: list[quarantining.SetAside] = []
        self.engine: dispatching.Engine
        self.intake: intake.SpoolIntake
        self.smtp: submission_smtp.SMTPServer | intake_workers.Supervisor
        self.deliverability: deliverability.Deliverability
        self.replicator: suppression.Replicator | None = None
        self.feedback: feedback_smtp.FeedbackServer | None = None
        self.tls_reporting: tlsrpt_sending.Reporting
        self.tls_inbound: tlsrpt_inbound.Inbound
        self.events: event_publishing.Publisher
        self.tracker: tracking.Tracker
        self.handoff: handoff.HandOff | None = None
        self._handoff_task: asyncio.Task[None] | None = None
        self._handoff_draining = False
        """A hand-off drain is on (engine stopped, queue marked or being marked)."""
        self._handoff_target: wire.HandoffTarget | None = None
        """Another pool's pods to hand to (`POST /v1/drain` with a target); None: own peers."""
        self._handed_off_before = 0
        """Messages handed off by runners that have ended (totals.handedOff)."""
        self._drain_lock = asyncio.Lock()
        self._late: set[asyncio.Task[None]] = set()
        """Hand-offs of mail accepted after the queue was marked (`_hand_off_late`)."""

    @property
    def listen_address(self) -> str:
        """The configured address, else the pod's own (POD_IP), else every address."""
        return self.cfg.submission.listen_address or self.identity.pod_ip or "0.0.0.0"

    # --- start ----------------------------------------------------------------------------

    async def start(self) -> None:
        cfg = self.cfg
        self._load_secrets(cfg)
        self.keys.configure(cfg.dkim.domains)
        self.quarantined = await asyncio.to_thread(
            quarantining.set_aside_corrupt, Path(cfg.spool_dir), QUARANTINABLE,
            now=self.clock.wall(),
        )
        for moved in self.quarantined:
            self.metrics.quarantined.labels(moved.database).inc()
        self.spool = spool.Spool.open(cfg.spool_dir, sync=cfg.spool_sync)
        self.kpis = kpi_keeping.KpiKeeper(cfg=cfg, spool_=self.spool, clock_=self.clock)
        await asyncio.to_thread(self.kpis.load)
        self.deliverability = deliverability.Deliverability(
            cfg=cfg,
            keys=deliverability.load_keys(cfg, spool_dir=cfg.spool_dir),
            node_id=self.identity.pod_name,
            spool_=self.spool,
            clock_=self.clock,
            metric_set=self.metrics,
            suppression_path=Path(cfg.spool_dir) / deliverability.SUPPRESSION_FILE,
        )
        if self._custom_hooks is None:
            self.hooks = self.deliverability.hook_set()
        self.events = event_publishing.Publisher(
            cfg, spool_=self.spool, metric_set=self.metrics, clock_=self.clock,
            pod_ip=self.identity.pod_ip,
        )
        self.tracker = tracking.Tracker(cfg=cfg, metric_set=self.metrics, wall=self.clock.wall,
                                        sink=events.JsonSink(self.events))
        self.events.listeners.append(self.kpis.observe)
        tracking.chain_observer(self.hooks, self.tracker)
        self.engine = dispatching.Engine(
            cfg=cfg,
            spool_=self.spool,
            resolver=self._resolver(cfg),
            keystore=self.keys,
            lease_table=self.leases,
            hook_set=self.hooks,
            metric_set=self.metrics,
            clock_=self.clock,
            pod_ip=self.identity.pod_ip,
            hostname=self.hostname,
        )
        self.deliverability.count_feedback = self.engine.record_feedback
        self.engine.events = self.deliverability.events = self.events
        lost = self.deliverability.suppressions
        if any(m.database == "suppression" for m in self.quarantined):
            lost.require_resync()
        lost.resync_listeners.append(self.engine.release_held)
        self.engine.load()
        self.spool.start()
        await self.events.start()
        self.kpis.start()
        self.engine.start()
        self.intake = intake.SpoolIntake(
            cfg=cfg,
            spool_=self.spool,
            engine=self.engine,
            metric_set=self.metrics,
            clock_=self.clock,
            hostname=self.hostname,
        )
        self.intake.accepted_while_draining = self._accepted_while_draining
        self.intake.events = self.events
        self.intake.rewriter = self.tracker
        self._start_tlsrpt(cfg)  # before any await: no session is counted before the load
        self.metrics.attach(self._collect)
        self.metrics.attach(self.kpis.collect)
        processes = intake_workers.process_count(cfg.submission.processes)
        if processes > 1:
            self.smtp = intake_workers.Supervisor(
                count=processes, intake_=self.intake, hostname=self.hostname,
                host=self.listen_address, grace=self.grace, metric_set=self.metrics,
            )
        else:
            self.smtp = submission_smtp.SMTPServer(
                cfg.submission, self.intake, self.hostname, host=self.listen_address
            )
        await self.smtp.start()
        await self._start_http(cfg)
        await self._start_deliverability(cfg)
        self._reload_task = asyncio.create_task(self._watch(), name="config-watch")
        if await asyncio.to_thread(self.spool.count_handoff):
            if await asyncio.to_thread(self.spool.handoff_mode) == "settle":
                log.info("unsettled hand-offs in the spool: finishing them, accepting mail")
                self.handoff = self._new_runner()
                self.handoff.start()
            else:
                log.info("hand-off rows in the spool: resuming the hand-off")
                self.drain(handoff=True)
        log.info(
            "sender started",
            extra={
                "pod": self.identity.pod_name,
                "pending": self.engine.pending_count(),
                "smtp_port": self.smtp.port,
                "http_port": self.http_port,
                "admin_port": self.admin_port,
                "public_port": self.public_port,
            },
        )

    def _start_tlsrpt(self, cfg: config.SenderConfig) -> None:
        """TLS-RPT: counts read back from disk and the send loop; the inbound door."""
        store = tlsrpt_store.Store(Path(cfg.spool_dir) / tlsrpt_store.FILE)
        self.tls_reporting = tlsrpt_sending.Reporting(
            cfg, aggregator=self.engine.transport.reports, store=store,
            resolver=self.engine.resolver.resolver, intake_=self.intake,
            metric_set=self.metrics, wall=self.clock.wall, pod=self.identity.pod_name,
        )
        self.tls_reporting.load()
        self.tls_reporting.start()
        self.tls_inbound = tlsrpt_inbound.Inbound(cfg, store=store, metric_set=self.metrics,
                                                  wall=self.clock.wall)

    def _tlsrpt_stats(self) -> wire.TLSReportStats:
        sent = self.tls_reporting.totals
        return wire.TLSReportStats(
            sent=sent["sent"], dropped=sent["dropped"], no_rua=sent["no_rua"],
            pending=self.tls_reporting.store.outbox_size(),
            received=self.tls_inbound.stats(), refused=dict(self.tls_inbound.refusals),
        )

    async def _start_deliverability(self, cfg: config.SenderConfig) -> None:
        d = cfg.deliverability
        peers = self._peers(cfg)
        if peers is not None and self.deliverability.keys.peer_token is not None:
            self.replicator = suppression.Replicator(
                self.deliverability.suppressions,
                peers,
                token=lambda: self.deliverability.keys.peer_token,
                self_url=f"http://{self.identity.pod_ip}:{self.admin_port}"
                if self.identity.pod_ip else None,
                pull_interval=units.duration_seconds(d.peers.pull_interval),
            )
            await self.replicator.start()
        if d.feedback_port is not None:
            self.feedback = feedback_smtp.FeedbackServer(
                self.deliverability,
                host=self.listen_address,
                port=d.feedback_port,
                hostname=self.hostname,
                max_connections=d.feedback_max_connections,
                max_connections_per_client=d.feedback_max_connections_per_client,
                idle_timeout=units.duration_seconds(d.feedback_idle_timeout),
                data_timeout=units.duration_seconds(d.feedback_data_timeout),
            )
            self.feedback.handler.tls_reports = self.tls_inbound
            await self.feedback.start()
            self.feedback_port = self.feedback.port

    def _peers(self, cfg: config.SenderConfig) -> suppression.PeersProvider | None:
        """The pool's pods as base URLs of their admin listener (replication, hand-off)."""
        p = cfg.deliverability.peers
        if p.urls:
            return suppression.static_peers(p.urls)
        if p.service:
            port = cfg.submission.admin_port
            nameservers = [(n.address, n.port) for n in cfg.dns.nameservers]
            resolver = (
                mx.make_resolver(nameservers, timeout=units.duration_seconds(cfg.dns.timeout))
                if nameservers else None
            )
            return suppression.dns_peers(p.service, port, resolver=resolver)
        return None

    def suppression_app_routes(self) -> web.RouteTableDef:
        s = self.cfg.deliverability.suppression
        return suppression.suppression_routes(
            self.deliverability.suppressions,
            # Read per request: both the admin token and the peer tokens may be rotated.
            lambda request: _token_authorizer([
                t for t in (self._admin_token, *self.deliverability.keys.peer_tokens) if t
            ])(request),
            max_import_entries=s.max_import_entries,
            max_import_bytes=s.max_import_bytes,
            admin_auth=lambda request: _token_authorizer(
                [self._admin_token] if self._admin_token else []
            )(request),
        )

    def _resolver(self, cfg: config.SenderConfig) -> mx.MXResolver:
        resolver = mx.make_resolver(
            [(n.address, n.port) for n in cfg.dns.nameservers],
            timeout=units.duration_seconds(cfg.dns.timeout),
        )
        return mx.MXResolver(
            resolver,
            min_ttl=units.duration_seconds(cfg.dns.min_ttl),
            max_ttl=units.duration_seconds(cfg.dns.max_ttl),
        )

    async def _start_http(self, cfg: config.SenderConfig) -> None:
        """Three listeners, each with only its own paths (docs/security.md): submission for
        applications, admin for the operator and the pool's pods, public for the Internet."""
        api = http_api.Api(self)
        s = cfg.submission
        max_body = s.max_message_size * 2 + 64 * 1024  # JSON escaping can double the size
        host = self.listen_address
        if isinstance(self.smtp, intake_workers.Supervisor):
            self.http_port = self.smtp.http_port  # the workers serve it
        else:
            self.http_port = await self._serve(api.app("submission", max_body=max_body), host,
                                               s.http_port)
        # Hand-offs from peers arrive here too: a whole message, or a replication batch.
        max_admin = max(max_body, cfg.deliverability.suppression.max_import_bytes * 2)
        self.admin_port = await self._serve(api.app("admin", max_body=max_admin), host,
                                            s.admin_port)
        public = cfg.deliverability.public_port
        if public is not None:
            self.public_port = await self._serve(
                api.app("public", max_body=http_api.MAX_UNSUBSCRIBE_BODY * 4), host, public,
                ssl_context=self.tracker.ssl_context(),
            )
        if s.allow_unauthenticated and s.api_key_file is None:
            log.warning("http submission accepts mail without an API key "
                        "(allowUnauthenticated): only for trusted networks")
        elif not self._api_keys:
            log.warning("http submission has no API key (no apiKeyFile, or an empty one): "
                        "POST /v1/messages answers 401")

    async def _serve(
        self, app: web.Application, host: str, port: int, *,
        ssl_context: ssl.SSLContext | None = None,
    ) -> int:
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, host, port, reuse_address=True, ssl_context=ssl_context)
        await site.start()
        self._runners.append(runner)
        server = site._server
        assert server is not None
        sockets = getattr(server, "sockets", None) or []
        return int(sockets[0].getsockname()[1]) if sockets else port

    def _load_secrets(self, cfg: config.SenderConfig) -> None:
        self._api_keys = http_submission.read_lines(cfg.submission.api_key_file)
        tokens = http_submission.read_lines(cfg.admin_token_file)
        self._admin_token = tokens[0] if tokens else None
        if cfg.admin_token_file is not None and self._admin_token is None:
            raise config.ConfigError(f"admin token file {cfg.admin_token_file} is empty")

    def _keys_for(self, cfg: config.SenderConfig) -> link_keys.PoolKeys:
        """The running keys when the new config names the same files, else read afresh (a
        config naming files that cannot be used is refused, as at start)."""
        d, old = cfg.deliverability, self.cfg.deliverability
        running = self.deliverability.keys
        if (d.link_key_dir, d.peer_token_file) == (old.link_key_dir, old.peer_token_file):
            return running
        return deliverability.load_keys(cfg, spool_dir=cfg.spool_dir)

    # --- reload ---------------------------------------------------------------------------

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(RELOAD_INTERVAL)
            try:
                self.check_reload()
            except Exception:
                log.exception("reload check failed")

    def check_reload(self) -> bool:
        """Reload the config if its file changed, and any changed key file; True on reload."""
        if self.keys.refresh():
            self.engine.keys_changed()
        self.deliverability.keys.refresh()
        self.tracker.refresh()
        stamp = _file_stamp(self.config_path)
        if stamp == self._config_stamp:
            return False
        self._config_stamp = stamp
        try:
            cfg, digest = config.load_config(self.config_path)
            self._load_secrets(cfg)
            keys = self._keys_for(cfg)
        except (config.ConfigError, OSError) as exc:
            self.config_error = str(exc)
            self.metrics.config_valid.set(0)
            self.metrics.config_reload_failures.inc()
            log.error("config reload refused; keeping the last good config",
                      extra={"error": str(exc), "path": str(self.config_path)})
            return False
        if digest == self.config_hash and self.config_error is None:
            return False
        self._apply(cfg)
        self.deliverability.keys = keys
        self.config_hash = digest
        self.config_error = None
        self.metrics.config_valid.set(1)
        self.metrics.config_reloads.inc()
        log.info("config reloaded", extra={"generation": cfg.generation, "hash": digest})
        return True

    def _apply(self, cfg: config.SenderConfig) -> None:
        old = self.cfg
        restart_needed = [
            name
            for name, before, after in (
                ("spoolDir", old.spool_dir, cfg.spool_dir),
                ("submission.smtpPort", old.submission.smtp_port, cfg.submission.smtp_port),
                ("submission.httpPort", old.submission.http_port, cfg.submission.http_port),
                ("submission.adminPort", old.submission.admin_port, cfg.submission.admin_port),
                ("submission.processes", old.submission.processes, cfg.submission.processes),
                ("deliverability.publicPort", old.deliverability.public_port,
                 cfg.deliverability.public_port),
                ("tracking.tlsCertFile", old.tracking.tls_cert_file,
                 cfg.tracking.tls_cert_file),
            )
            if before != after
        ]
        if restart_needed:
            log.warning("config change needs a restart to apply", extra={"fields": restart_needed})
        self.cfg = cfg
        self.keys.configure(cfg.dkim.domains)
        if old.dns != cfg.dns:
            self.engine.resolver = self._resolver(cfg)
            self.tls_reporting.resolver = self.engine.resolver.resolver
        self.engine.reconfigure(cfg)
        self.tls_reporting.reconfigure(cfg)
        self.tls_inbound.reconfigure(cfg)
        self.engine.keys_changed()
        self.deliverability.reconfigure(cfg)
        self.events.reconfigure(cfg)
        self.tracker.reconfigure(cfg)
        self.kpis.reconfigure(cfg)
        self.intake.cfg = cfg
        self.smtp.reload(cfg.submission)

    # --- leases and stats -----------------------------------------------------------------

    def assign(self, assignment: wire.Assignment) -> wire.AssignmentStatus:
        sent = {addr: n for (addr, kind), n in self.engine.counts_today().per_ip.items()
                if kind == "sent"}
        change = self.leases.apply(assignment, sent_today=sent,
                                   in_flight=self.engine.inflight_by_ip())
        log.info(
            "assignment applied",
            extra={"generation": assignment.generation, "granted": change.granted,
                   "revoked": change.revoked},
        )
        self.engine.sources_changed(change.revoked)
        return self.assignment_status()

    def assignment_status(self) -> wire.AssignmentStatus:
        now = self.clock.monotonic()
        counts = self.engine.counts_today()
        return wire.AssignmentStatus(
            pod=self.identity.pod_name,
            generation=self.leases.generation,
            day=counts.day,
            leases=[
                wire.LeaseStatus(
                    address=s.address,
                    helo_name=s.helo_name,
                    lease_id=s.lease_id,
                    epoch=s.epoch,
                    expires_in_seconds=s.remaining(now),
                    valid=s.valid(now),
                    warmup=s.warmup,
                    quota_remaining=s.quota_left(),
                    sent_today=counts.per_ip.get((s.address, "sent"), 0),
                )
                for s in self.leases.sources.values()
            ],
        )

    async def settle_counters(self) -> None:
        """Wait until the counter updates queued so far are committed to the spool (a spool
        whose writer stopped answers with what it holds: stats still serve)."""
        with contextlib.suppress(spool.SpoolError):
            await self.spool.flush()

    def stats(self) -> wire.Stats:
        counts = self.engine.counts_today()
        egress = self.engine.egress.snapshot()
        addresses = sorted({a for a, _ in counts.per_ip} | set(self.leases.sources)
                           | {a for a, _ in egress})
        wall, now = self.clock.wall(), self.clock.monotonic()
        ips = []
        for address in addresses:
            source = self.leases.get(address)
            ips.append(
                wire.IPStats(
                    address=address,
                    sent_today=counts.per_ip.get((address, "sent"), 0),
                    delivered_today=counts.per_ip.get((address, "delivered"), 0),
                    bounced_today=counts.per_ip.get((address, "bounced"), 0),
                    deferred_today=counts.per_ip.get((address, "deferred"), 0),
                    complained_today=counts.per_ip.get((address, "complained"), 0),
                    quota_remaining=source.quota_left() if source else None,
                    lease_expires_at=(
                        datetime.datetime.fromtimestamp(
                            wall + source.remaining(now), datetime.UTC
                        )
                        if source
                        else None
                    ),
                    egress=[_egress(epoch, activity) for (a, epoch), activity in egress.items()
                            if a == address],
                )
            )
        today = wire.Totals(
            delivered=sum(n for (_, k), n in counts.per_ip.items() if k == "delivered"),
            deferred=sum(n for (_, k), n in counts.per_ip.items() if k == "deferred"),
            bounced=sum(n for (_, k), n in counts.per_ip.items() if k == "bounced"),
        )
        totals = self.engine.totals
        return wire.Stats(
            pod=self.identity.pod_name,
            pool=self.cfg.pool,
            config_generation=self.cfg.generation,
            config_hash=self.config_hash,
            config_error=self.config_error,
            day=counts.day,
            days=self._past_days(counts.day),
            draining=self.draining,
            queues={
                name: wire.QueueStats(depth=depth, oldest_age_seconds=age, held=held)
                for name, (depth, age, held) in self.engine.queue_stats().items()
            },
            ips=ips,
            totals=wire.Totals(
                accepted=totals["accepted"],
                delivered=totals["delivered"],
                deferred=totals["deferred"],
                bounced=totals["bounced"],
                expired=totals["expired"],
                suppressed=totals["suppressed"],
                handed_off=self._handed_off_before
                + (self.handoff.handed_off if self.handoff else 0),
            ),
            today=today,
            rates=wire.Rates.model_validate(self.deliverability.rates_snapshot()),
            shaping={
                name: wire.ShapingState(
                    factor=state["factor"], backoffs=state["backoffs"],
                    suspended_for_seconds=state["suspendedForSeconds"],
                )
                for name, state in self.deliverability.shaping_snapshot().items()
            },
            suppression=self._suppression_stats(),
            spool=wire.SpoolStats(
                quarantined=[
                    wire.QuarantinedDatabase(
                        database=m.database, path=str(m.moved_to), reason=m.reason,
                        at=datetime.datetime.fromtimestamp(m.at, datetime.UTC),
                    )
                    for m in self.quarantined
                ],
                commit_failures=self.spool.commit_failures,
                unrecorded_updates=self.spool.unrecorded,
            ),
            handoff=self._handoff_stats(),
            dkim=self._dkim_stats(),
            tls=self.engine.transport.stats(),
            tlsrpt=self._tlsrpt_stats(),
            events=self.events.stats(),
            kpis=self.kpis.stats(),
        )

    def _past_days(self, today: int) -> list[wire.DayStats]:
        """The persisted counters of the `PAST_DAYS` days before today, every day listed: the
        operator judges a warm-up day it missed (down across midnight) on them."""
        first = today - PAST_DAYS
        found = self.spool.load_counters_between(first, today - 1)
        days = []
        for day in range(first, today):
            counts = found.get(day, {})
            days.append(
                wire.DayStats(
                    day=day,
                    ips=[
                        wire.DayIPStats(
                            address=address,
                            sent=counts.get((address, "sent"), 0),
                            delivered=counts.get((address, "delivered"), 0),
                            bounced=counts.get((address, "bounced"), 0),
                            deferred=counts.get((address, "deferred"), 0),
                            complained=counts.get((address, "complained"), 0),
                        )
                        for address in sorted({a for a, _ in counts})
                    ],
                )
            )
        return days

    def _dkim_stats(self) -> dict[str, wire.DKIMDomainStats]:
        unusable = self.keys.unusable()
        return {
            domain: wire.DKIMDomainStats(selectors=selectors, unusable=unusable.get(domain, {}))
            for domain, selectors in self.keys.in_use().items()
        }

    def _suppression_stats(self) -> wire.SuppressionStats:
        lst = self.deliverability.suppressions
        r = self.replicator.metrics if self.replicator else suppression.ReplicationMetrics()
        return wire.SuppressionStats(
            entries=len(lst),
            recorded_here=lst.metrics.added,
            replication_pushes=r.pushes,
            replication_push_failures=r.push_failures,
            replication_pulls=r.pulls,
            replication_pull_failures=r.pull_failures,
            peers=r.peers,
            peer_discovery_failures=sum(r.discovery_failures.values()),
            last_discovery_error=r.last_discovery_error,
            resync_pending=lst.resync_pending,
        )

    def _collect(self) -> list[GaugeMetricFamily]:
        depth = gauge("queue_depth", "Deliveries not yet final, per class.", ["class"])
        oldest = gauge("queue_oldest_age_seconds", "Age of the oldest pending delivery.", ["class"])
        for name, (n, age, _) in self.engine.queue_stats().items():
            depth.add_metric([name], n)
            oldest.add_metric([name], age)
        quota = gauge("ip_quota_remaining", "Messages a leased IP may still send today.", ["ip"])
        sent = gauge("ip_sent_today", "Messages sent from an IP this quota day.", ["ip"])
        counts = self.engine.counts_today()
        for source in self.leases.sources.values():
            left = source.quota_left()
            quota.add_metric([source.address], -1 if left is None else left)
        for (address, kind), n in counts.per_ip.items():
            if kind == "sent":
                sent.add_metric([address], n)
        draining = gauge("draining", "1 while the sender refuses new mail.", [])
        draining.add_metric([], 1 if self.draining else 0)
        lst = self.deliverability.suppressions
        entries = gauge("suppression_entries", "Addresses on the pool's suppression list.", [])
        entries.add_metric([], len(lst))
        problems = gauge(
            "suppression_requests_refused",
            "Suppression API and replication requests refused, by reason (counter).",
            ["reason"],
        )
        m = lst.metrics
        for reason, n in (("import_rejected", m.import_rejected),
                          ("invalid_request", m.invalid_requests),
                          ("unauthorized", m.unauthorized),
                          ("merge_rejected", m.merge_rejected)):
            problems.add_metric([reason], n)
        replication = gauge(
            "suppression_replication", "Replication pushes and pulls by result (counter).",
            ["kind", "result"],
        )
        r = self.replicator.metrics if self.replicator else suppression.ReplicationMetrics()
        for kind, ok, failed in (("push", r.pushes, r.push_failures),
                                 ("pull", r.pulls, r.pull_failures)):
            replication.add_metric([kind, "ok"], ok)
            replication.add_metric([kind, "failed"], failed)
        factor = gauge("shaping_rate_factor", "Reactive shaping factor of a provider (1 = "
                       "configured rate, 0 = suspended); slowed providers only.", ["provider"])
        for name, state in self.deliverability.shaping_snapshot().items():
            factor.add_metric([name], state["factor"])
        in_use = gauge("dkim_selector_in_use", "1 for the selector signing a domain's mail, "
                       "per algorithm (none: the domain's mail is held).",
                       ["domain", "algorithm", "selector"])
        for domain, selectors in self.keys.in_use().items():
            for algorithm, selector in selectors.items():
                in_use.add_metric([domain, algorithm, selector], 1)
        unusable = gauge("dkim_key_unusable", "1 for a configured DKIM key whose file cannot be "
                         "used (missing, unreadable, wrong type).", ["domain", "selector"])
        for domain, bad in self.keys.unusable().items():
            for selector in bad:
                unusable.add_metric([domain, selector], 1)
        peers = gauge("peers", "Other pods of the pool found at the last peer discovery.", [])
        discovery = gauge("peer_discovery_failures", "Peer discoveries that failed or found "
                          "no pod (counter).", ["reason"])
        if self.replicator is not None:
            peers.add_metric([], r.peers)
            for reason, n in sorted(r.discovery_failures.items()):
                discovery.add_metric([reason], n)
        return [depth, oldest, quota, sent, draining, entries, problems, replication, factor,
                in_use, unusable, peers, discovery, *self._spool_gauges()]

    def _spool_gauges(self) -> list[GaugeMetricFamily]:
        failures = gauge("spool_commit_failures", "Spool transactions that failed; their "
                         "outcome and counter updates are retried (counter).", [])
        failures.add_metric([], self.spool.commit_failures)
        unrecorded = gauge("spool_unrecorded_updates", "Outcome and counter updates of failed "
                           "spool commits waiting for a retry.", [])
        unrecorded.add_metric([], self.spool.unrecorded)
        resync = gauge("suppression_resync_pending", "1 while the suppression list is lost and "
                       "not restored (bulk mail held).", [])
        resync.add_metric([], 1 if self.deliverability.suppressions.resync_pending else 0)
        return [failures, unrecorded, resync]

    # --- Backend protocol for the HTTP API -----------------------------------------------

    def api_keys(self) -> list[str]:
        return self._api_keys

    def admin_token(self) -> str | None:
        return self._admin_token

    def peer_tokens(self) -> list[str]:
        """Every token of the peers file is accepted (rotation: see docs/security.md)."""
        return [t for t in self.deliverability.keys.peer_tokens if t]

    def ready(self) -> bool:
        return self.intake.accepting and not self.stopping and self.smtp.serving()

    def drain(self, *, handoff: bool = False, target: wire.HandoffTarget | None = None) -> None:
        """Refuse new mail from now on; queued mail keeps going out, or with `handoff` moves
        to the pool's other pods (or to `target`, another pool's pods: a hand-off under way
        follows a new target from its next message). Idempotent."""
        if not self.draining:
            log.info("draining", extra={"handoff": handoff, "target": bool(target)})
        self.draining = True
        self.intake.accepting = False
        if handoff:
            self._handoff_target = target
        if handoff and not self._handoff_draining:
            self._handoff_draining = True
            self._handoff_task = asyncio.create_task(self._begin_handoff(), name="handoff")

    def drain_status(self) -> wire.DrainStatus:
        runner = self.handoff
        return wire.DrainStatus(
            draining=self.draining,
            handoff=self._handoff_draining,
            ready=self.ready(),
            handoff_state=self._handoff_stats().state,
            handoff_unsettled=len(runner.unclear()) if runner is not None else 0,
        )

    def _handoff_stats(self) -> wire.HandoffStats:
        """The hand-off as the operator must see it. While a hand-off starts (in-flight
        deliveries finishing, rows being marked) there is no runner yet, or only the one of an
        earlier hand-off: it is reported running (its queue still counts in `queues`), never
        idle or done, or the operator would take the drain as settled and undrain the pod
        before anything was handed off."""
        stats = self.handoff.status() if self.handoff is not None else wire.HandoffStats()
        if self._handoff_task is not None and not self._handoff_task.done():
            return stats.model_copy(update={"state": "running"})
        return stats

    def _new_runner(
        self, carry: tuple[dict[str, handoff._Sticky], dict[str, int]] | None = None
    ) -> handoff.HandOff:
        own = self._peers(self.cfg) or suppression.static_peers([])

        async def peers() -> Sequence[str]:
            target = self._handoff_target
            return list(target.urls) if target is not None else await own()

        def api_key() -> str | None:
            """Another pool's submission key, else the peer token (own pods' admin port)."""
            target = self._handoff_target
            if target is not None:
                return target.api_key
            return self.deliverability.keys.peer_token

        return handoff.HandOff(
            spool_=self.spool,
            peers=peers,
            self_urls=self._self_urls(),
            api_key=api_key,
            pod=self.identity.pod_name,
            cfg=self.cfg.deliverability.handoff,
            metric_set=self.metrics,
            clock_=self.clock,
            carry=carry,
        )

    def _retire_runner(self) -> tuple[dict[str, handoff._Sticky], dict[str, int]] | None:
        """Forget the current runner (already stopped), keeping its count and its carry."""
        runner, self.handoff = self.handoff, None
        if runner is None:
            return None
        self._handed_off_before += runner.handed_off
        return runner.carry()

    async def _begin_handoff(self) -> None:
        """Stop local delivery, mark what is left for hand-off (durably), hand it off."""
        if self.handoff is not None:  # still settling messages of an earlier hand-off
            await self.handoff.finish_now()
        carry = self._retire_runner()
        await self.engine.stop(grace=self.grace)
        while True:
            try:
                await self.spool.flush()
                marked = await self.spool.mark_handoff()
                break
            except spool.SpoolError:
                # Not marked, so nothing is handed off and the engine is stopped: try again
                # rather than leave the pod draining with its mail and nothing moving it.
                log.exception("marking the queue for hand-off failed; trying again")
                await asyncio.sleep(MARK_RETRY)
        self.engine.forget_pending()
        log.info("hand-off started", extra={"messages_marked": marked})
        self.handoff = self._new_runner(carry)
        self.handoff.start()

    def _accepted_while_draining(self) -> None:
        if self._handoff_draining and not self.stopping:
            task = asyncio.create_task(self._hand_off_late(), name="handoff-late")
            self._late.add(task)
            task.add_done_callback(self._late.discard)

    async def _hand_off_late(self) -> None:
        """Mail stored after the queue was marked (an SMTP transaction begun before the drain
        may end after it) is marked too and handed off, not left queued behind a stopped
        engine; a runner that already finished is followed by a new one."""
        async with self._drain_lock:
            if self._handoff_task is not None:
                with contextlib.suppress(Exception):  # undrain reports a failed start
                    await asyncio.shield(self._handoff_task)
            if not self._handoff_draining or self.stopping:
                return  # undrained meanwhile: the message was loaded into the queue
            await self.spool.flush()
            if not await self.spool.mark_handoff():
                return  # the start phase marked it
            self.engine.forget_pending()  # the stopped engine's copy is stale
            runner = self.handoff
        if runner is not None:
            with contextlib.suppress(Exception):
                await runner.wait()  # a running runner may have read its last batch already
        async with self._drain_lock:
            if not self._handoff_draining or self.stopping or self.handoff is not runner:
                return  # undrained, stopped, or a newer runner that reads the spool anyway
            if runner is not None and runner.state == "running":
                return
            carry = self._retire_runner()
            self.handoff = self._new_runner(carry)
            self.handoff.start()
            log.info("hand-off resumed for mail accepted while draining")

    async def undrain(self) -> wire.DrainStatus:
        """Accept mail again (`DELETE /v1/drain`). Idempotent. A hand-off in progress is
        cancelled: re-submissions under way get their answer first; messages no peer accepted
        go back to the local queue; those whose last attempt got no clear answer keep going
        to that pod until settled there (it may hold them), never delivered here too."""
        async with self._drain_lock:
            if self.stopping or not self.draining:
                return self.drain_status()
            if self._handoff_draining:
                if self._handoff_task is not None:
                    # The start phase (engine stop within the grace period, marking) ends
                    # first, so the spool and the engine are in a known state.
                    try:
                        await asyncio.shield(self._handoff_task)
                    except Exception:
                        log.exception("hand-off start failed; undraining anyway")
                    self._handoff_task = None
                if self.handoff is not None:
                    await self.handoff.finish_now()
                keep = self.handoff.unclear() if self.handoff is not None else []
                await self.spool.flush()
                returned = await self.spool.unmark_handoff(keep)
                carry = self._retire_runner()
                self.engine.forget_pending()
                self.engine.resume()
                await self.engine.reload()
                if keep:
                    self.handoff = self._new_runner(carry)
                    self.handoff.start()
                self._handoff_draining = False
                self._handoff_target = None
                log.info("hand-off cancelled", extra={"requeued_deliveries": returned,
                                                      "unsettled_messages": len(keep)})
            self.draining = False
            self.intake.accepting = True
            log.info("undrained: accepting mail again")
            return self.drain_status()

    def _self_urls(self) -> list[str]:
        hosts = {self.identity.pod_ip, self.listen_address, "127.0.0.1", "localhost"}
        return [f"http://{h}:{self.admin_port}" for h in hosts if h and h != "0.0.0.0"]

    # --- stop -----------------------------------------------------------------------------

    def request_stop(self) -> None:
        self._stop_requested.set()

    async def wait_stopped(self) -> None:
        await self._stop_requested.wait()
        await self.stop()

    async def stop(self, grace: float | None = None) -> None:
        if self.stopping:
            await self._stopped.wait()
            return
        self.stopping = True
        grace = self.grace if grace is None else grace
        self.intake.accepting = False
        if self._reload_task is not None:
            self._reload_task.cancel()
        await self.smtp.stop(grace=grace)
        for late in list(self._late):
            late.cancel()
        if self._handoff_task is not None:
            self._handoff_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._handoff_task
        if self.handoff is not None:
            await self.handoff.stop()
        await self.engine.stop(grace=grace)
        await self.tls_reporting.stop()
        if self.feedback is not None:
            await self.feedback.stop()
        if self.replicator is not None:
            await self.replicator.stop()
        for runner in self._runners:
            await runner.cleanup()
        await self.events.stop()
        await self.kpis.stop()
        await asyncio.to_thread(self.spool.close)
        await asyncio.to_thread(self.events.close)
        self.tls_reporting.store.close()
        self.deliverability.close()
        self._stopped.set()
        log.info("sender stopped", extra={"pending": self.engine.pending_count(),
                                          "spool_commits": self.spool.commits})

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, self.request_stop)


def _token_authorizer(tokens: Sequence[str]) -> suppression.Authorizer:
    """Any of the tokens as Bearer; open when there is none (like the other admin paths)."""
    checks = [suppression.bearer_authorizer(t) for t in tokens]

    def check(request: web.Request) -> bool:
        if not checks:
            return True
        allowed = False
        for one in checks:  # no early exit: timing does not tell which token matched
            allowed |= one(request)
        return allowed

    return check


async def run(config_path: str | Path, *, env: Mapping[str, str] | None = None) -> int:
    """Run until SIGTERM/SIGINT; the exit code of the process."""
    try:
        service = Service(config_path, env=env)
    except config.ConfigError as exc:
        log.error("invalid config", extra={"error": str(exc)})
        return 2
    await service.start()
    service.install_signal_handlers()
    await service.wait_stopped()
    return 0
