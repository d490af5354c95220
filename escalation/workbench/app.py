"""The Textual app: the session list, the conversation, the reply box and the status line."""

from __future__ import annotations

import asyncio
import contextlib
import io
import itertools
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, tzinfo
from typing import Any, ClassVar

import grpc
import structlog
from rich.console import Console, RenderableType
from textual import events
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Footer, Input, OptionList, Static
from textual.widgets.option_list import Option

from escalation.client import ClientError
from escalation.consoles.refusal import refusal_lines
from escalation.domain.display import one_line
from escalation.v1 import common_pb2, merchant_pb2
from escalation.workbench import quick_replies, views
from escalation.workbench.backend import Backend, CursorGap
from escalation.workbench.state import Notice, SessionView, WorkbenchState

log = structlog.get_logger(__name__)

# Seconds between attempts to load the first screen while the service is unreachable.
RETRY_SECONDS = 2.0
# Answers no retry can change: the token is rejected or lacks the right (SPEC §3 Auth). Every other
# failure (UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED…) is the service being away or busy.
FINAL_CODES = frozenset({grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED})
# `escalation workbench`'s exit status when the service refuses the token (as for bad usage).
EXIT_REFUSED = 2


def is_final(exc: BaseException) -> bool:
    """True when ``exc`` is an answer retrying would only repeat (FINAL_CODES)."""
    return isinstance(exc, ClientError) and exc.code in FINAL_CODES


def _utc_now() -> datetime:
    return datetime.now(UTC)


class TemplatePicker(ModalScreen[merchant_pb2.ReplyTemplate | None]):
    """The shop's quick replies; Enter sends the highlighted one, Escape cancels."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, templates: list[merchant_pb2.ReplyTemplate]) -> None:
        super().__init__()
        self._pairs = quick_replies.shortcuts(templates)

    def compose(self) -> ComposeResult:
        options = [
            Option(f"{n}. /{one_line(word)}  {one_line(t.title)}: {one_line(t.text)}", id=str(n - 1))
            for n, (word, t) in enumerate(self._pairs, start=1)
        ]
        yield OptionList(*options, id="templates")

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(self._pairs[int(event.option.id or 0)][1])

    def action_cancel(self) -> None:
        self.dismiss(None)


class Workbench(App[None]):
    """`escalation workbench` (docs/clients.md)."""

    TITLE = "escalation workbench"
    ENABLE_COMMAND_PALETTE = False
    CSS = """
    #sessions { width: 45%; min-width: 36; max-width: 60; height: 100%; border-right: solid $primary; padding: 0 1; }
    #conversation { padding: 0 1; }
    #closed { display: none; color: $warning; }
    #closed.shown { display: block; }
    #notice { height: 1; background: $boost; }
    #status { height: 1; }
    TemplatePicker { align: center middle; }
    TemplatePicker OptionList { width: 80%; height: auto; max-height: 80%; border: solid $primary; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("ctrl+up", "select(-1)", "Previous", priority=True),
        Binding("ctrl+down", "select(1)", "Next", priority=True),
        Binding("ctrl+t", "templates", "Quick replies", priority=True),
        Binding("ctrl+q", "quit", "Quit", priority=True),
    ]

    def __init__(
        self,
        backend: Backend,
        state: WorkbenchState,
        *,
        target: str = "",
        clock: Callable[[], datetime] = _utc_now,
        tz: tzinfo | None = None,
        tick_seconds: float = 1.0,
    ) -> None:
        super().__init__()
        self.backend = backend
        self.state = state
        self.target = target
        self.clock = clock
        self.tz = tz
        self.tick_seconds = tick_seconds
        self.selected: str | None = None
        self.connection = "connecting"
        # Why the app stopped on a final answer (FINAL_CODES), for `escalation workbench` to print.
        self.stopped: str | None = None
        self.templates: list[merchant_pb2.ReplyTemplate] = []
        # Every notice shown and the bells rung, in order: what a person at the desk saw and heard.
        self.notices: list[Notice] = []
        self.bells = 0
        # The notice on the notice line now (None: the line is empty).
        self.notice_line: Notice | None = None
        self._history_loaded: set[str] = set()
        # The session list's rows as last drawn: (session id, height in lines), top to bottom.
        self._rows: list[tuple[str, int]] = []
        # The session and newest message seq the conversation pane last showed.
        self._shown: tuple[str, int] | None = None

    def compose(self) -> ComposeResult:
        with Horizontal():
            yield Static(id="sessions")
            with Vertical():
                with VerticalScroll(id="scroll"):
                    yield Static(id="conversation")
                yield Static(id="closed")
                yield Input(placeholder="Reply; / for quick replies (Ctrl+T lists them)", id="reply")
        yield Static(id="notice")
        yield Static(id="status")
        yield Footer()

    async def on_mount(self) -> None:
        self.sub_title = f"{self.state.agent_id}@{self.state.merchant_id}"
        self.redraw()
        self.run_worker(self._follow(), name="events", exclusive=True)
        if self.tick_seconds > 0:
            self.set_interval(self.tick_seconds, self.redraw)

    # -- the event stream --------------------------------------------------------------------------

    async def _follow(self) -> None:
        """Loads the templates and open sessions, then applies the merchant's events as they come.

        The SDK reconnects the stream by itself; a unary call failing meanwhile (the service restarting)
        costs only a refresh, retried with the next event or the resync after the reconnect. A final
        answer (FINAL_CODES: the token refused) stops the app with EXIT_REFUSED and the reason."""
        try:
            for _attempt in itertools.count():
                if await self._load():
                    break
                await asyncio.sleep(RETRY_SECONDS)
            async for item in self.backend.events():
                if isinstance(item, CursorGap):
                    self._show(Notice("", "Could not resume the event stream: reloaded the open sessions", bell=False))
                    await self._resync(replace=True, sessions=item.sessions)
                else:
                    await self._apply(item)
                self.redraw()
        except Exception as exc:  # the stream gave up (a revoked token, say): say so, keep the screen
            reason = self._why(exc)
            self.connection = f"stopped: {reason[:80]}"
            self.redraw()
            if is_final(exc):
                log.warning("workbench.refused", reason=reason)
                self.stopped = reason
                self.exit(return_code=EXIT_REFUSED)
            else:
                log.exception("workbench.events_failed")

    async def _load(self) -> bool:
        """Loads the first screen; False when the service is away (try again). Raises ClientError for a
        final answer (FINAL_CODES)."""
        try:
            self.templates = await self.backend.templates()
            await self._resync(replace=True)
        except Exception as exc:  # the service is not up yet: say so and try again
            if is_final(exc):
                raise
            self.connection = f"waiting for the service: {self._why(exc)[:80]}"
            self.redraw()
            return False
        return True

    def _why(self, exc: Exception) -> str:
        """One line on why a call failed (escalation/consoles/refusal.py for a ClientError)."""
        if isinstance(exc, ClientError):
            return one_line(refusal_lines(exc, self.target or "the service")[0])
        return one_line(str(exc))

    async def _resync(self, *, replace: bool, sessions: tuple[common_pb2.Session, ...] | None = None) -> None:
        """Reloads the open sessions: ``replace`` after CURSOR_EXPIRED (what is not listed ended in the
        gap), otherwise merges (once connected: what changed before the stream started, and refreshes
        that failed while it was down)."""
        if sessions is None:
            sessions = tuple(await self.backend.open_sessions())
        if replace:
            self.state.replace_open(list(sessions))
        else:
            for session in sessions:
                self.state.upsert_session(session)
        if self.selected is None or self.selected not in self.state.sessions:
            ordered = self.state.ordered(self.clock())
            await self.select(ordered[0].session_id if ordered else None)
        self.redraw()

    async def _refresh(self, session_id: str) -> None:
        """GetSession into the state; a failure is logged and left to the next refresh or resync."""
        try:
            self.state.upsert_session(await self.backend.session(session_id))
        except Exception:
            log.warning("workbench.refresh_failed", session_id=session_id, exc_info=True)

    async def _apply(self, event: merchant_pb2.MerchantEvent) -> None:
        kind = event.WhichOneof("kind")
        carries_session = kind in ("session_assigned", "session_unassigned")
        if event.session_id and event.session_id not in self.state.sessions and not carries_session:
            # Not seen yet (started without a cursor, or in a resync's gap): fetch it first.
            await self._refresh(event.session_id)
        for notice in self.state.apply(event, self.clock()):
            self._show(notice)
        if kind == "message_added" and event.message_added.message.sender != common_pb2.SENDER_MERCHANT:
            # R5: the deadline this message set is in no event; the session holds it.
            await self._refresh(event.session_id)
        elif kind == "message_added":
            self._replied(event.session_id)
        if self.selected is not None and self.selected not in self.state.sessions:
            # The selected session moved to another agent (R13): show the next one.
            ordered = self.state.ordered(self.clock())
            await self.select(ordered[0].session_id if ordered else None)
        elif self.selected is None and kind == "session_assigned":
            await self.select(event.session_id)
        elif event.session_id == self.selected and event.session_id in self.state.sessions:
            await self._read(self.state.sessions[event.session_id])

    def connection_changed(self, connection: str, cursor: int | None) -> None:
        """The SDK's on_state callback: connected/reconnecting and the cursor it resumes from."""
        connected = connection == "connected" and self.connection != "connected"
        self.connection = connection
        if connected and self.is_running:
            self.run_worker(self._resync(replace=False), name="resync", group="resync", exclusive=True)
        if cursor is not None and (self.state.cursor is None or cursor > self.state.cursor):
            self.state.cursor = cursor
        self.redraw()

    def _show(self, notice: Notice) -> None:
        self.notices.append(notice)
        self.notice_line = notice
        self.query_one("#notice", Static).update(notice.text)
        self.notify(notice.text, markup=False, severity="warning" if notice.bell else "information")
        if notice.bell:
            self.bells += 1
            self.bell()

    def _replied(self, session_id: str) -> None:
        """A merchant reply to ``session_id`` landed (this workbench's or another's): its "Reply due
        by …" is answered, so the notice line drops it (any other notice stays)."""
        shown = self.notice_line
        if shown is not None and shown.reply_due and shown.session_id == session_id:
            self.notice_line = None
            self.query_one("#notice", Static).update("")

    # -- selection and reading ---------------------------------------------------------------------

    async def select(self, session_id: str | None) -> None:
        """Shows a session's conversation and sends a read receipt for it (SPEC R8)."""
        self.selected = session_id
        view = self.state.sessions.get(session_id) if session_id else None
        if view is not None and session_id not in self._history_loaded:
            before = view.session.last_seq
            try:
                history = await self.backend.messages(view.session_id)
            except Exception:  # shown without history; the next selection tries again
                log.warning("workbench.history_failed", session_id=view.session_id, exc_info=True)
            else:
                for message in history:
                    self.state.add_message(message)
                self._history_loaded.add(view.session_id)
                if view.session.last_seq > before:  # the session row was older than its messages
                    await self._refresh(view.session_id)
        if view is not None:
            await self._read(view)
        self.redraw()
        if view is not None and view.is_open:
            self.query_one("#reply", Input).focus()

    async def _read(self, view: SessionView) -> None:
        newest = max(view.messages, default=0)
        # A closed session takes no read receipt (the service ignores it; the SDK would resend it).
        if view.is_open and newest > view.read_seq:
            try:
                await self.backend.mark_read(view.session_id, newest)
            except Exception:  # sent again with the next message or selection
                log.warning("workbench.read_receipt_failed", session_id=view.session_id, exc_info=True)
                return
            view.read_seq = newest

    async def on_click(self, event: events.Click) -> None:
        """A click on a row of the session list selects that session."""
        if event.widget is None or event.widget.id != "sessions":
            return
        line = event.y - event.widget.styles.padding.top
        for session_id, height in self._rows:
            if line < height:
                await self.select(session_id)
                return
            line -= height

    async def action_select(self, step: int) -> None:
        ordered = [v.session_id for v in self.state.ordered(self.clock())]
        if not ordered:
            return
        at = ordered.index(self.selected) if self.selected in ordered else -step
        await self.select(ordered[(at + step) % len(ordered)])

    # -- replying ----------------------------------------------------------------------------------

    async def on_input_submitted(self, event: Input.Submitted) -> None:
        typed = event.value
        if not typed.strip() or self.selected is None:
            return
        wanted = quick_replies.resolve(typed, self.templates)
        if isinstance(wanted, quick_replies.OpenPicker):
            event.input.value = ""
            self.action_templates()
        elif isinstance(wanted, quick_replies.Unknown):
            self.notify(wanted.message, markup=False, severity="error")
        elif isinstance(wanted, quick_replies.TemplateReply):
            if await self._send(lambda sid: self.backend.reply_template(sid, wanted.template.template_id)):
                event.input.value = ""
        elif await self._send(lambda sid: self.backend.reply_text(sid, wanted.text)):
            event.input.value = ""

    def action_templates(self) -> None:
        if self.selected is None or not self.state.sessions[self.selected].is_open:
            return
        if not self.templates:
            self.notify("The shop has no quick replies yet (the main account creates them).", severity="warning")
            return

        async def picked(template: merchant_pb2.ReplyTemplate | None) -> None:
            if template is not None:
                await self._send(lambda sid: self.backend.reply_template(sid, template.template_id))

        self.push_screen(TemplatePicker(self.templates), picked)

    async def _send(self, call: Callable[[str], Awaitable[common_pb2.Message]]) -> bool:
        """Sends a reply in the selected session; the answer is recorded at once (the MessageAdded
        event for it later changes nothing: messages are kept by seq)."""
        session_id = self.selected
        if session_id is None:
            return False
        try:
            message = await call(session_id)
        except Exception as exc:  # a closed session, a rate limit: the agent reads why and retries
            self.notify(one_line(str(exc)), markup=False, severity="error", title="Reply not sent")
            with contextlib.suppress(Exception):  # the stream brings the news anyway
                self.state.upsert_session(await self.backend.session(session_id))
            self.redraw()
            return False
        self.state.add_message(message)
        self._replied(session_id)
        self.redraw()
        return True

    # -- drawing -----------------------------------------------------------------------------------

    def redraw(self) -> None:
        """Redraws every pane from the state (also once a second, for the countdowns)."""
        if not self.is_running or not self.screen.query("#sessions"):
            return  # before the screen is up, or after the app ended (the SDK reports its close)
        now = self.clock()
        listed, self._rows = views.session_list(self.state, now, self.selected)
        self.query_one("#sessions", Static).update(listed)
        view = self.state.sessions.get(self.selected) if self.selected else None
        conversation = self.query_one("#conversation", Static)
        closed = self.query_one("#closed", Static)
        reply = self.query_one("#reply", Input)
        if view is None:
            conversation.update("Waiting for sessions…")
            closed.remove_class("shown")
            reply.disabled = True
        else:
            titles = {t.template_id: t.title for t in self.templates}
            conversation.update(views.conversation(self.state, view, now, self.tz, titles))
            shown = (view.session_id, max(view.messages, default=0))
            if shown != self._shown:  # another session, or a new message: show its end
                self._shown = shown
                self.query_one("#scroll", VerticalScroll).scroll_end(animate=False)
            closed.set_class(not view.is_open, "shown")
            if not view.is_open:
                closed.update(views.closed_banner(view))
            reply.disabled = not view.is_open
        self.query_one("#status", Static).update(views.status_line(self.state, self.connection, self.target))


def screen_renderable(app: App[Any]) -> RenderableType:
    """The whole current screen as Rich renders it: what ``App.export_screenshot`` draws."""
    update = app.screen._compositor.render_update(full=True, screen_stack=app._background_screens)
    assert update is not None  # a full update always has something
    return update


def screen_text(app: App[Any]) -> str:
    """The current screen as plain text (what a person sees, without colours): the tests' snapshots
    and the README's capture."""
    width, height = app.size
    console = Console(
        width=width, height=height, file=io.StringIO(), record=True, color_system=None, legacy_windows=False
    )
    console.print(screen_renderable(app))
    return "\n".join(line.rstrip() for line in console.export_text().splitlines())
