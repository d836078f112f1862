#!/usr/bin/env python3
"""Drive `loops mcp` with the official MCP Python SDK (PyPI `mcp`), a client that is not ours.

Usage: drive.py LOOPS_BIN WORKSPACE [CALLS_JSON]

Starts `LOOPS_BIN --workspace WORKSPACE mcp` over stdio, runs initialize and tools/list,
then each call in CALLS_JSON (from the third argument, else stdin): a JSON list of
{"tool": NAME, "args": {...}}. An argument value that is a string "$N.a.b" is replaced by
the field a.b of call N's parsed result (N counts from 0), so a call can use an id an
earlier call returned.

Prints one JSON document to stdout:
  {"server": {"name", "version"}, "instructions", "protocol_version",
   "tools": [{"name", "description", "input_schema"}],
   "results": [{"tool", "is_error", "content", "protocol_error"}]}
where content is the text content parsed as JSON (or the raw text when it is not JSON)
and protocol_error is set, instead, when the server answered with a JSON-RPC error.
The server's stderr passes through to ours.
"""

import asyncio
import json
import os
import re
import sys

from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client

# The SDK's 2.x renamed the protocol error (McpError -> MCPError) and made its models'
# fields snake_case (isError -> is_error, serverInfo -> server_info, ...): this client
# runs on both majors, so a machine with either installed can run the tests.
try:
    from mcp.shared.exceptions import MCPError as McpError
except ImportError:
    from mcp.shared.exceptions import McpError


def field(obj, snake, camel):
    """A model field under its 2.x (snake_case) or 1.x (camelCase) name."""
    if hasattr(obj, snake):
        return getattr(obj, snake)
    return getattr(obj, camel)

REF = re.compile(r"^\$(\d+)((?:\.[A-Za-z0-9_-]+)*)$")


def resolve(value, results):
    """Replaces "$N.path" strings in value with fields of earlier results."""
    if isinstance(value, dict):
        return {k: resolve(v, results) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve(v, results) for v in value]
    if isinstance(value, str):
        m = REF.match(value)
        if m:
            cur = results[int(m.group(1))]["content"]
            for key in filter(None, m.group(2).split(".")):
                cur = cur[int(key)] if isinstance(cur, list) else cur[key]
            return cur
    return value


def parse_content(result):
    texts = [c.text for c in result.content if getattr(c, "type", None) == "text"]
    text = "\n".join(texts)
    try:
        return json.loads(text)
    except ValueError:
        return text


async def drive(binary, workspace, calls):
    params = StdioServerParameters(
        command=binary,
        args=["--workspace", workspace, "mcp"],
        # The SDK passes only a minimal environment by default; the tests' git identity
        # and TZ must reach the server.
        env=dict(os.environ),
    )
    out = {"results": []}
    async with stdio_client(params) as (read, write):
        async with ClientSession(read, write) as session:
            init = await session.initialize()
            info = field(init, "server_info", "serverInfo")
            out["server"] = {"name": info.name, "version": info.version}
            out["instructions"] = init.instructions
            out["protocol_version"] = str(field(init, "protocol_version", "protocolVersion"))
            listed = await session.list_tools()
            out["tools"] = [
                {
                    "name": t.name,
                    "description": t.description,
                    "input_schema": field(t, "input_schema", "inputSchema"),
                }
                for t in listed.tools
            ]
            for call in calls:
                args = resolve(call.get("args", {}), out["results"])
                entry = {"tool": call["tool"], "args": args}
                try:
                    r = await session.call_tool(call["tool"], args)
                    entry["is_error"] = bool(field(r, "is_error", "isError"))
                    entry["content"] = parse_content(r)
                except McpError as e:
                    entry["is_error"] = True
                    entry["content"] = None
                    entry["protocol_error"] = str(e)
                out["results"].append(entry)
    return out


def main():
    if len(sys.argv) < 3:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    raw = sys.argv[3] if len(sys.argv) > 3 else sys.stdin.read()
    calls = json.loads(raw) if raw.strip() else []
    out = asyncio.run(drive(sys.argv[1], sys.argv[2], calls))
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
