"""Hooks `RequestGuard` into PJSIP as a module below the transaction layer (priority 15), through ctypes.

pjsua2 offers no way to see a request before PJSIP acts on it: `onIncomingCall` runs after the call's media
sockets exist, and in-dialog BYE / re-INVITE, SUBSCRIBE, MESSAGE and OPTIONS never reach Python at all. The
pjsua2 wheel exports the whole C API, so a `pjsip_module` whose `on_rx_request` is a ctypes callback sees
every request first and answers the refused ones statelessly (`pjsip_endpt_respond_stateless`).

The callback runs on the worker's main thread (the only one polling SIP: `uaConfig.threadCnt = 0`). It reads
four fields of `pjsip_rx_data`, at offsets taken from pjproject 2.15.1's headers for x86-64 Linux with the
wheel's `PJSIP_MAX_PKT_LEN` of 4000 (`_Layout`); `install` checks them on the first request (source port and
address parse, the message starts inside the packet buffer) and, should they ever disagree, logs an error and
lets requests through to the checks pjsua2 still has (`onIncomingCall`'s ACL).
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Callable
from dataclasses import dataclass

import pjsua2 as pj

from sipbridge.sip.guard import ALLOW, RequestGuard, WireRequest, parse_request

log = logging.getLogger("sipbridge.worker")

_PRIORITY = 15  # after the transport layer (8), before transactions (16): no state exists yet
_PJ_TRUE, _PJ_FALSE = 1, 0


@dataclass(frozen=True)
class _Layout:
    """Offsets in pjsip_rx_data / pjsip_module (pjproject 2.15.1, LP64, PJSIP_MAX_PKT_LEN 4000)."""

    packet: int = 320
    packet_size: int = 4000
    src_name: int = 4368
    src_port: int = 4416
    msg_buf: int = 4424
    msg_len: int = 4432
    module_size: int = 112
    mod_name: int = 16
    mod_priority: int = 36
    mod_on_rx_request: int = 72
    mod_on_rx_response: int = 80


L = _Layout()
_RxCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p)


class _PjStr(ctypes.Structure):
    _fields_ = [("ptr", ctypes.c_char_p), ("slen", ctypes.c_long)]


def _pj_str(text: str) -> _PjStr:
    data = text.encode()
    return _PjStr(data, len(data))


@dataclass(frozen=True)
class RxView:
    """The fields of one pjsip_rx_data the guard reads."""

    ip: str
    port: int
    raw: bytes


def _read(rdata: int) -> RxView | None:
    port = ctypes.c_int.from_address(rdata + L.src_port).value
    name = ctypes.string_at(rdata + L.src_name, 46).split(b"\0", 1)[0].decode("ascii", "replace")
    buf = ctypes.c_void_p.from_address(rdata + L.msg_buf).value or 0
    size = ctypes.c_int.from_address(rdata + L.msg_len).value
    start = rdata + L.packet
    if not (0 < port < 65536 and start <= buf < start + L.packet_size and 0 < size <= L.packet_size):
        return None
    return RxView(name, port, ctypes.string_at(buf, size))


class PjGuard:
    """The registered module; keep the instance alive for as long as the endpoint lives."""

    def __init__(self, guard: RequestGuard, on_refused: Callable[[WireRequest, str, int, str], None]) -> None:
        self.guard = guard
        self.on_refused = on_refused
        self.broken = False
        self.lib = ctypes.CDLL(pj._pjsua2.__file__)
        self.lib.pjsua_get_pjsip_endpt.restype = ctypes.c_void_p
        self.lib.pjsua_pool_create.restype = ctypes.c_void_p
        self.lib.pjsua_pool_create.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_size_t]
        self.lib.pjsip_generic_string_hdr_create.restype = ctypes.c_void_p
        self.lib.pjsip_generic_string_hdr_create.argtypes = [
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_void_p,
        ]
        self.lib.pjsip_endpt_respond_stateless.argtypes = [
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_int,
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_void_p,
        ]
        self.lib.pjsip_endpt_register_module.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
        self.endpt = self.lib.pjsua_get_pjsip_endpt()
        self._pool = self.lib.pjsua_pool_create(b"sipbridge-guard", 1024, 1024)
        self._keep: list[object] = []
        self._headers = {
            405: self._header_list(("Allow", ALLOW)),
            415: self._header_list(("Accept", "application/sdp")),
            501: self._header_list(("Allow", ALLOW)),
            503: self._header_list(("Retry-After", "1")),
        }
        self._rx = _RxCallback(self._on_rx_request)
        self._rx_response = _RxCallback(self._on_rx_response)
        self._module = ctypes.create_string_buffer(L.module_size)
        self._name = _pj_str("mod-sipbridge-guard")
        base = ctypes.addressof(self._module)
        ctypes.memmove(base + L.mod_name, ctypes.addressof(self._name), ctypes.sizeof(_PjStr))
        ctypes.c_int.from_address(base + L.mod_priority).value = _PRIORITY
        ctypes.c_void_p.from_address(base + L.mod_on_rx_request).value = ctypes.cast(
            self._rx, ctypes.c_void_p
        ).value
        ctypes.c_void_p.from_address(base + L.mod_on_rx_response).value = ctypes.cast(
            self._rx_response, ctypes.c_void_p
        ).value
        status = self.lib.pjsip_endpt_register_module(self.endpt, base)
        if status != 0:
            raise RuntimeError(f"cannot register the SIP request guard (pj status {status})")

    def _header_list(self, *headers: tuple[str, str]) -> ctypes.Array[ctypes.c_char]:
        """A pjsip_hdr list head (prev, next first) linking generic string headers from our pool."""
        head = ctypes.create_string_buffer(64)
        prev = ctypes.addressof(head)
        nodes = []
        for name, value in headers:
            hname, hvalue = _pj_str(name), _pj_str(value)
            self._keep += [hname, hvalue]
            nodes.append(
                self.lib.pjsip_generic_string_hdr_create(
                    self._pool, ctypes.addressof(hname), ctypes.addressof(hvalue)
                )
            )
        chain = [prev, *nodes, prev]
        for i, node in enumerate(chain[:-1]):
            ctypes.c_void_p.from_address(node + 8).value = chain[i + 1]  # next
            ctypes.c_void_p.from_address(chain[i + 1]).value = node  # prev
        self._keep.append(head)
        return head

    def _on_rx_request(self, rdata: int) -> int:
        try:
            return self._check(rdata)
        except Exception:
            log.exception("SIP request guard failed on a request; passing it to PJSIP")
            return _PJ_FALSE

    def _check(self, rdata: int) -> int:
        if self.broken:
            return _PJ_FALSE
        view = _read(rdata)
        req = parse_request(view.raw) if view is not None else None
        if view is None or req is None:
            self.broken = True
            log.error("SIP request guard: pjsip_rx_data layout differs from pjproject 2.15.1; guard off")
            return _PJ_FALSE
        verdict = self.guard.check(req, view.ip)
        if verdict.passes:
            return _PJ_FALSE
        if verdict.code > 0:
            reason = _pj_str(verdict.reason)
            headers = self._headers.get(verdict.code)
            self.lib.pjsip_endpt_respond_stateless(
                self.endpt,
                rdata,
                verdict.code,
                ctypes.addressof(reason),
                ctypes.addressof(headers) if headers is not None else None,
                None,
            )
        self.on_refused(req, view.ip, verdict.code, verdict.reason)
        return _PJ_TRUE  # handled: no transaction, dialog or media for it

    def _on_rx_response(self, rdata: int) -> int:
        """The first answer to an INVITE we sent names the dialog's peer (in-dialog requests must come from
        it)."""
        try:
            view = _read(rdata)
            if view is not None:
                call_id = _response_call_id(view.raw)
                if call_id:
                    self.guard.answered_by(call_id, view.ip)
        except Exception:
            log.exception("SIP request guard failed on a response")
        return _PJ_FALSE


def _response_call_id(raw: bytes) -> str:
    for line in raw.partition(b"\r\n\r\n")[0].split(b"\r\n")[1:]:
        name, sep, value = line.partition(b":")
        if sep and name.strip().lower() in (b"call-id", b"i"):
            return value.strip().decode("utf-8", "replace")
    return ""


class CallTerminator:
    """`pjsip_inv_terminate` for a pjsua call index: ends a call at once, without the BYE that PJSIP would
    hold back until the caller's ACK (`pending_bye`). Used for a 200 that is never ACKed, which would hold
    its slot until PJSIP's own timers gave up (30-64 s).

    pjsua2 does not expose a call's `pjsip_inv_session`; it is `pjsua_var.calls[i].inv` (offsets from
    pjproject 2.15.1 built with PJSUA_MAX_CALLS 4, checked at start: `calls[i].index == i`)."""

    _CALLS, _STRIDE, _INV = 56416, 21504, 112

    def __init__(self, max_calls: int) -> None:
        self.lib = ctypes.CDLL(pj._pjsua2.__file__)
        self.lib.pjsip_inv_terminate.argtypes = [ctypes.c_void_p, ctypes.c_uint, ctypes.c_int]
        self.base = ctypes.addressof(ctypes.c_char.in_dll(self.lib, "pjsua_var")) + self._CALLS
        indexes = [ctypes.c_uint.from_address(self.base + i * self._STRIDE).value for i in range(max_calls)]
        self.ok = indexes == list(range(max_calls))
        if not self.ok:
            log.error("pjsua_var layout differs from pjproject 2.15.1: un-ACKed calls end at PJSIP's timer")

    def terminate(self, index: int, code: int) -> bool:
        if not self.ok or index < 0:
            return False
        inv = ctypes.c_void_p.from_address(self.base + index * self._STRIDE + self._INV).value
        return bool(inv) and self.lib.pjsip_inv_terminate(inv, code, 1) == 0
