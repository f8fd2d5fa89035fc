"""Delivery of a processed message from the spool: try the route's next
hop, then remove the message, defer it with backoff, or bounce it with a
DSN (RFC 3464) when it truly cannot go.  A message still deferred after
``[delivery] delay_warning`` gets one "delayed" DSN to its sender (as
Postfix's delay_warning_time), recorded in its state so it goes once.
Next hops are built per config; the ones a SIGHUP replaced are closed once
the deliveries using them end."""
from __future__ import annotations

import asyncio
import time
from pathlib import Path

from gateway import logs, mailtext, metrics, srs
from gateway.authn.resolver import Resolver
from gateway.config import Config, RouteSettings
from gateway.delivery import Content, DeliveryResult, NextHop, build as build_next_hop, remote_queue_id
from gateway.delivery.dsn import build_dsn
from gateway.delivery.leases import Leases
from gateway.mime.parse import Limits, parse
from gateway.mime.rewrite import salvage_headers
from gateway.spool.durable import write_atomic
from gateway.spool.envelope import Envelope, State
from gateway.spool.queue import REWRITTEN, Handle

log = logs.get("worker")


class Deliverer:
    """The next hops of the routes and the DSN next hop, and what to do with
    each delivery's outcome."""

    def __init__(self, cfg: Config, limits: Limits) -> None:
        self.next_hops: dict[str, NextHop] = {}
        self.bounce_hop: NextHop | None = None
        self.leases = Leases()
        self.configure(cfg, limits)

    def configure(self, cfg: Config, limits: Limits) -> None:
        """Take a (re)loaded config: build the next hops anew and close the
        old ones once their deliveries have ended (their pooled connections
        would otherwise stay open to a next hop no longer configured)."""
        old = [*self.next_hops.values(), *([self.bounce_hop] if self.bounce_hop is not None else [])]
        self.cfg, self.limits = cfg, limits
        base = Path(cfg.base_dir)
        # A DSN is written in the language of the route the message came on.
        catalogues = mailtext.catalogues(cfg.path(cfg.i18n.directory) if cfg.i18n.directory else None)
        self.texts = {r.name: mailtext.for_language(catalogues, r.language) for r in cfg.routes}
        self.default_texts = mailtext.for_language(catalogues, "en")
        rewriter = srs.from_config(cfg)
        # MX lookups for next hops given by domain use the DNS settings of
        # [auth] (servers, timeout): one resolver for every next hop.
        resolver = Resolver(cfg.auth.servers(), cfg.auth.dns_timeout)
        self.next_hops = {}
        for r in cfg.routes:
            hop = build_next_hop(
                r.next_hop, base_dir=base, hostname=cfg.gateway.hostname, tls=r.tls,
                connect_timeout=cfg.delivery.connect_timeout, command_timeout=cfg.delivery.command_timeout,
                max_connections=cfg.delivery.connections_per_next_hop,
                tls_ca_file=cfg.path(r.tls_ca_file) if r.tls_ca_file else None, resolver=resolver)
            # Routes with ``srs = true`` send with an SRS envelope sender, so
            # SPF at the next hop checks the gateway's own domain.
            self.next_hops[r.name] = srs.SrsNextHop(hop, srs.always(rewriter)) \
                if r.srs and rewriter is not None else hop
        self.bounce_hop = build_next_hop(cfg.delivery.bounce_next_hop, base_dir=base,
                                         hostname=cfg.gateway.hostname, resolver=resolver)
        for hop in old:
            self.leases.retire(hop)

    async def close(self) -> None:
        """Close every next hop (at stop), after the retired ones."""
        await self.leases.drain()
        for hop in [*self.next_hops.values(), *([self.bounce_hop] if self.bounce_hop is not None else [])]:
            await hop.close()

    async def deliver(self, handle: Handle, envelope: Envelope, route: RouteSettings, content: Content,
                      state: State | None = None) -> None:
        """Try the next hop; then remove, defer or bounce.  ``state`` is the
        message's, when the caller has read it already."""
        if state is None:
            state = await asyncio.to_thread(handle.state)
        rcpts = state.pending or list(envelope.rcpt_tos)
        started = time.monotonic()
        removed: list[Exception | None] = []

        def remove_if_delivered(result: DeliveryResult) -> None:
            # In a thread the delivery had or shares (no hop of its own): a
            # message every recipient took is removed there; anything else
            # is decided below.
            if result.delivered and not result.deferred and not result.failed:
                try:
                    handle.remove()
                except Exception as e:  # noqa: BLE001 - raised below, as if removed here
                    removed.append(e)
                else:
                    removed.append(None)

        async with self.leases.using(self.next_hops[route.name]) as hop:
            result = await hop.deliver(envelope, rcpts, content, then=remove_if_delivered)
        outcome = "deferred" if result.deferred else "failed" if result.failed else "delivered"
        metrics.DELIVERY_SECONDS.labels(route.name, outcome).observe(time.monotonic() - started)
        qlog = log.bind(queue_id=handle.queue_id, route=route.name, next_hop=hop.name)
        now = time.time()
        for r in result.delivered:
            # As Postfix's status=sent (250 2.0.0 Ok: queued as ...): what
            # the next hop said, and its queue id to follow the message there.
            reply = result.replies.get(r)
            qlog.info("delivered", rcpt=r, seconds=round(time.monotonic() - started, 4),
                      **({"reply": reply, "remote_queue_id": remote_queue_id(reply)} if reply else {}))
        expired = now - envelope.received_at > self.cfg.delivery.queue_lifetime
        failed = dict(result.failed)
        if expired and result.deferred:
            for r, reason in result.deferred.items():
                failed[r] = f"5.4.7 delivery time expired; last error: {reason}"
            result.deferred.clear()
        for r, reason in failed.items():
            qlog.warning("bounced", rcpt=r, reason=reason)
        if failed:
            metrics.BOUNCED.labels(route.name).inc(len(failed))
            await self._bounce(handle, envelope, failed)
        if result.deferred:
            delivery = self.cfg.delivery
            state.attempts += 1
            state.first_attempt = state.first_attempt or now
            delay = min(delivery.max_backoff, delivery.min_backoff * 2 ** (state.attempts - 1))
            state.next_attempt = now + delay
            state.pending = list(result.deferred)
            state.last_error = next(iter(result.deferred.values()))
            for r, reason in result.deferred.items():
                qlog.warning("deferred", rcpt=r, reason=reason, attempts=state.attempts, retry_in=delay)
            warn_after = delivery.delay_warning
            if warn_after and not state.delay_warned and now - envelope.received_at > warn_after:
                # Once per message: a warning that could not go now is tried
                # again at the next deferral.
                if not envelope.mail_from:
                    state.delay_warned = now  # the null sender is never told
                elif await self._notify(handle, envelope, result.deferred, "delayed",
                                        retry_until=envelope.received_at + delivery.queue_lifetime):
                    state.delay_warned = now

            def _defer() -> None:
                if not handle.has(REWRITTEN):
                    content.write_to(handle.file(REWRITTEN))
                handle.save_state(state)
                handle.move("deferred")

            await asyncio.to_thread(_defer)
            metrics.DEFERRED.labels(route.name).inc()
            return
        if not removed:
            await asyncio.to_thread(handle.remove)
        elif removed[0] is not None:
            raise removed[0]
        if not failed:
            metrics.DELIVERED.labels(route.name).inc()
        qlog.info("removed")

    async def _bounce(self, handle: Handle, envelope: Envelope, failed: dict[str, str]) -> None:
        if not envelope.mail_from:
            log.info("no DSN to the null sender", queue_id=handle.queue_id)
            return
        await self._notify(handle, envelope, failed, "failed")

    async def _notify(self, handle: Handle, envelope: Envelope, reasons: dict[str, str], action: str,
                      retry_until: float | None = None) -> bool:
        """Send the sender a DSN (``action`` "failed" or "delayed") about
        ``reasons`` through the bounce next hop; whether it was delivered or
        refused for good (so there is no point trying it again)."""
        with handle.message() as src:
            root = parse(src, self.limits) if src.size else None
            if root is None:
                headers = b""
            elif root.unexamined is not None:
                headers = salvage_headers(src)  # the header block itself was beyond a bound
            else:
                headers = src.read(0, root.body_start)
        dsn = build_dsn(envelope, reasons, headers, self.cfg.gateway.hostname, action=action,
                        texts=self.texts.get(envelope.route, self.default_texts),
                        retry_until=retry_until)
        path = handle.file("dsn.eml" if action == "failed" else "delay.eml")
        await asyncio.to_thread(write_atomic, path, dsn)
        suffix = "D" if action == "failed" else "W"
        dsn_env = Envelope(queue_id=handle.queue_id + suffix, mail_from="", rcpt_tos=[envelope.mail_from],
                           route="", received_at=time.time())
        assert self.bounce_hop is not None
        async with self.leases.using(self.bounce_hop) as hop:
            result = await hop.deliver(dsn_env, [envelope.mail_from], Content(path))
        what = "DSN" if action == "failed" else "delay warning"
        if not result.delivered:
            # A DSN that cannot go now is not worth holding the original
            # message for; it is logged so an administrator can see it.
            log.error(f"{what} not delivered", queue_id=handle.queue_id,
                      reason=next(iter({**result.deferred, **result.failed}.values()), ""))
            return bool(result.failed)
        log.info(f"{what} sent", queue_id=handle.queue_id, to=envelope.mail_from)
        return True
