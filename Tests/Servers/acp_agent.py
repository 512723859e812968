#!/usr/bin/env python3
"""A scripted Agent Client Protocol agent for the acp plugin's tests.

Written with the official ACP Python SDK (PyPI `agent-client-protocol`,
support/deps.sh test): the SDK's own AgentSideConnection speaks the
protocol (JSON-RPC framing, schema validation, session/cancel routing), so
the plugin is tested against a real ACP implementation; only what the agent
does in a turn is scripted, chosen by the prompt's first word:

  (anything)      a thought, then "echo: <prompt>" in two chunks, and the
                  earlier prompts of the session ("earlier: a | b")
  TOOL <text>     a tool call (kind execute) that asks permission; allowed,
                  it appends <text> to $ACP_TEST_FILE and says "ran"; denied,
                  it says "not allowed" and ends the turn normally
  PLAN            a plan update, then "planned"
  SLOW            one chunk, then waits for session/cancel (stopReason
                  cancelled)
  HANG            one chunk, then ignores session/cancel and never answers
  ERROR <code>    fails the prompt with JSON-RPC error <code> (data
                  {"status": <code2>} when given as ERROR <code> <status>)
  CRASH           one chunk, then the process exits with status 3
  MAXTOKENS       stopReason max_tokens

ACP_TEST_EVERY_PROMPT, when set, is read instead of every prompt's text
(so the fixed prompt of a health check can be scripted too).

Every turn reports usage (PromptResponse.usage) and a usage_update with a
cumulative cost in USD. Sessions are kept in $ACP_TEST_STATE (a directory),
so `session/load` works in a new process.
"""
import asyncio
import json
import os
import sys
from typing import Any
from uuid import uuid4

from acp import (
    PROTOCOL_VERSION,
    Agent,
    InitializeResponse,
    LoadSessionResponse,
    NewSessionResponse,
    PromptResponse,
    RequestError,
    run_agent,
    text_block,
    update_agent_message,
    update_agent_thought,
    start_tool_call,
    update_tool_call,
    plan_entry,
    update_plan,
)
from acp.schema import AgentCapabilities, Implementation, PermissionOption, Usage, UsageUpdate, Cost


def state_dir() -> str:
    return os.environ.get("ACP_TEST_STATE", "/tmp")


def load(session_id: str) -> dict:
    try:
        with open(os.path.join(state_dir(), f"{session_id}.json")) as f:
            return json.load(f)
    except FileNotFoundError:
        return {"prompts": [], "cost": 0.0}


def save(session_id: str, s: dict) -> None:
    with open(os.path.join(state_dir(), f"{session_id}.json"), "w") as f:
        json.dump(s, f)


class ScriptedAgent(Agent):
    def on_connect(self, conn: Any) -> None:
        self._conn = conn
        self._cancelled: dict[str, asyncio.Event] = {}

    async def initialize(self, protocol_version: int, client_capabilities: Any = None, client_info: Any = None, **kwargs: Any) -> InitializeResponse:
        return InitializeResponse(
            protocol_version=PROTOCOL_VERSION,
            agent_capabilities=AgentCapabilities(load_session=True),
            agent_info=Implementation(name="scripted-acp-agent", title="Scripted ACP agent", version="1.0.0"),
        )

    async def new_session(self, cwd: str, mcp_servers: list, **kwargs: Any) -> NewSessionResponse:
        sid = uuid4().hex
        save(sid, {"prompts": [], "cost": 0.0, "cwd": cwd})
        return NewSessionResponse(session_id=sid)

    async def load_session(self, cwd: str, mcp_servers: list, session_id: str, **kwargs: Any) -> LoadSessionResponse:
        if not os.path.exists(os.path.join(state_dir(), f"{session_id}.json")):
            raise RequestError(-32002, "Resource not found", {"sessionId": session_id})
        # The protocol replays the conversation before answering.
        for p in load(session_id)["prompts"]:
            await self._conn.session_update(session_id=session_id, update=update_agent_message(text_block(f"(replayed) {p}")))
        return LoadSessionResponse()

    async def cancel(self, session_id: str, **kwargs: Any) -> None:
        ev = self._cancelled.get(session_id)
        if ev:
            ev.set()

    async def say(self, sid: str, text: str) -> None:
        await self._conn.session_update(session_id=sid, update=update_agent_message(text_block(text)))

    async def prompt(self, prompt: list, session_id: str, **kwargs: Any) -> PromptResponse:
        text = os.environ.get("ACP_TEST_EVERY_PROMPT") or " ".join(getattr(b, "text", "") or "" for b in prompt).strip()
        words = text.split()
        first = words[0] if words else ""
        s = load(session_id)
        self._cancelled[session_id] = asyncio.Event()
        stop = "end_turn"
        if first == "TOOL":
            stop = await self.tool(session_id, " ".join(words[1:]))
        elif first == "PLAN":
            await self._conn.session_update(
                session_id=session_id,
                update=update_plan([plan_entry("read the code", status="completed"), plan_entry("write the fix", priority="high")]),
            )
            await self.say(session_id, "planned")
        elif first == "SLOW":
            await self.say(session_id, "working")
            await self._cancelled[session_id].wait()
            return PromptResponse(stop_reason="cancelled")
        elif first == "HANG":
            await self.say(session_id, "working")
            await asyncio.sleep(3600)
        elif first == "ERROR":
            code = int(words[1]) if len(words) > 1 else -32603
            data = {"status": int(words[2])} if len(words) > 2 else None
            raise RequestError(code, f"scripted failure {code}", data)
        elif first == "CRASH":
            await self.say(session_id, "about to fail")
            await asyncio.sleep(0.1)
            os._exit(3)
        elif first == "MAXTOKENS":
            await self.say(session_id, "cut")
            stop = "max_tokens"
        else:
            await self._conn.session_update(session_id=session_id, update=update_agent_thought(text_block(f"thinking about {text}")))
            await self.say(session_id, "echo: ")
            await self.say(session_id, text)
            if s["prompts"]:
                await self.say(session_id, " (earlier: " + " | ".join(s["prompts"]) + ")")
        s["prompts"].append(text)
        s["cost"] = round(s["cost"] + 0.25, 6)
        save(session_id, s)
        await self._conn.session_update(
            session_id=session_id,
            update=UsageUpdate(session_update="usage_update", used=100 * len(s["prompts"]), size=200000, cost=Cost(amount=s["cost"], currency="USD")),
        )
        return PromptResponse(
            stop_reason=stop,
            usage=Usage(total_tokens=len(text) + 7, input_tokens=len(text), output_tokens=5, thought_tokens=2),
        )

    async def tool(self, sid: str, arg: str) -> str:
        call_id = "call_" + uuid4().hex[:8]
        raw = {"command": f"echo {arg} >> $ACP_TEST_FILE"}
        await self._conn.session_update(
            session_id=sid, update=start_tool_call(call_id, "append line", kind="execute", status="pending", raw_input=raw)
        )
        answer = await self._conn.request_permission(
            session_id=sid,
            tool_call=update_tool_call(call_id, title="append line", kind="execute", raw_input=raw),
            options=[
                PermissionOption(option_id="yes", name="Allow once", kind="allow_once"),
                PermissionOption(option_id="always", name="Always allow", kind="allow_always"),
                PermissionOption(option_id="no", name="Reject", kind="reject_once"),
            ],
        )
        outcome = answer.outcome
        chosen = getattr(outcome, "option_id", None)
        if chosen in ("yes", "always"):
            await self._conn.session_update(session_id=sid, update=update_tool_call(call_id, status="in_progress"))
            with open(os.environ["ACP_TEST_FILE"], "a") as f:
                f.write(arg + "\n")
            await self._conn.session_update(session_id=sid, update=update_tool_call(call_id, status="completed", raw_output={"ok": True}))
            await self.say(sid, "ran")
            return "end_turn"
        if getattr(outcome, "outcome", "") == "cancelled":
            return "cancelled"
        await self._conn.session_update(session_id=sid, update=update_tool_call(call_id, status="failed"))
        await self.say(sid, "not allowed")
        return "end_turn"


async def main() -> None:
    await run_agent(ScriptedAgent(), use_unstable_protocol=True)


if __name__ == "__main__":
    asyncio.run(main())
