# What the official MCP Python SDK does when its refresh grant meets a store outage at the
# gateway (see refresh-outage.sh): it authorizes (the browser part is browser.mjs's headless user
# agent), lists tools, then its TE is made to look expired to it (as after `expires_in`: the SDK
# refreshes before a request when it knows the token expired), OUTAGE_CMD makes the gateway's
# database refuse connections, and the next request refreshes. Reports what the SDK did with
# the 503 (kept the refresh token? sent the user to authorize again? retried?).
#
# python refresh-outage.py GATEWAY_URL EMAIL PASSWORD SERVER_PATH   (OUTAGE_CMD, RESTORE_CMD)
import asyncio
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import httpx2
from mcp import Client
from mcp.client.auth import AuthorizationCodeResult, OAuthClientProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import OAuthClientInformationFull, OAuthClientMetadata, OAuthToken

gateway, email, password, server_path = sys.argv[1:5]
here = Path(__file__).parent
redirect_url = "http://127.0.0.1:33422/callback"


class Memory:
    def __init__(self):
        self.tokens = None
        self.client = None

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.client

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.client = client_info


runs = []
token_answers = []


async def redirect_handler(authorization_url: str) -> None:
    runs.append({"url": authorization_url})
    script = (
        "const m = await import('./browser.mjs');"
        f"const landing = await m.userAgent(process.argv[1], {{ gateway: {json.dumps(gateway)}, email: {json.dumps(email)},"
        f" password: {json.dumps(password)}, redirectPrefix: {json.dumps(redirect_url)} }});"
        "console.log(JSON.stringify({ landing: landing.href }));"
    )
    done = await asyncio.to_thread(
        subprocess.run, ["node", "--input-type=module", "-e", script, authorization_url], cwd=here, capture_output=True, text=True
    )
    if done.returncode != 0:
        reason = [line for line in done.stderr.splitlines() if "Error" in line][:1]
        raise RuntimeError(f"the user agent failed: {reason}")
    runs[-1].update(json.loads(done.stdout.strip().splitlines()[-1]))


async def callback_handler() -> AuthorizationCodeResult:
    query = parse_qs(urlparse(runs[-1]["landing"]).query)
    first = lambda name: query.get(name, [None])[0]  # noqa: E731
    return AuthorizationCodeResult(code=first("code"), state=first("state"), iss=first("iss"))


async def record(response: httpx2.Response) -> None:
    if response.request.url.path.endswith("/.pomerium/mcp/token"):
        await response.aread()
        form = parse_qs(response.request.content.decode())
        token_answers.append(
            f"{form.get('grant_type', ['?'])[0]} -> {response.status_code} Retry-After: {response.headers.get('retry-after')} {response.text}"
        )


async def list_tools(auth: OAuthClientProvider) -> str:
    async with httpx2.AsyncClient(auth=auth, timeout=30, event_hooks={"response": [record]}) as http:
        async with Client(streamable_http_client(gateway + server_path, http_client=http), mode="legacy") as client:
            tools = await client.list_tools()
    return f"{len(tools.tools)} tools"


async def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="  log: %(name)s %(levelname)s %(message)s")
    # The SDK's log lines, without their tracebacks.
    for handler in logging.getLogger().handlers:
        handler.addFilter(lambda record: setattr(record, "exc_info", None) or True)
    storage = Memory()
    auth = OAuthClientProvider(
        server_url=gateway + server_path,
        client_metadata=OAuthClientMetadata(
            client_name="postern-python-outage",
            redirect_uris=[redirect_url],
            grant_types=["authorization_code", "refresh_token"],
            response_types=["code"],
            token_endpoint_auth_method="none",
        ),
        storage=storage,
        redirect_handler=redirect_handler,
        callback_handler=callback_handler,
    )
    print(f"  before: {await list_tools(auth)}, {len(runs)} authorization")
    before = storage.tokens
    # As after `expires_in`: the SDK refreshes before its next request.
    auth.context.token_expiry_time = 1
    subprocess.run(os.environ["OUTAGE_CMD"], shell=True, check=True)
    runs.clear()
    token_answers.clear()
    print("Python SDK, refresh during the store outage:")
    try:
        outcome = f"succeeded: {await list_tools(auth)}"
    except BaseException as error:  # noqa: BLE001 - reported, whatever it is
        outcome = f"failed: {type(error).__name__}: {str(error)[:200]}"
    print(f"  token endpoint answers: {'; '.join(token_answers)}")
    print(f"  the request: {outcome}")
    held = auth.context.current_tokens
    print(
        f"  tokens in memory after the 503: {'none (dropped)' if held is None else 'kept'}; in storage: "
        f"{'the same refresh token' if storage.tokens and storage.tokens.refresh_token == before.refresh_token else 'changed'}; "
        f"sent to authorize again: {len(runs) > 0} ({len(runs)} browser trips); refresh requests: "
        f"{sum(a.startswith('refresh_token') for a in token_answers)} (a retry would be more than 1)"
    )
    refused = next((a for a in token_answers if a.startswith("refresh_token")), "")
    if " -> 503 " not in refused or "Retry-After: None" in refused or "temporarily_unavailable" not in refused:
        raise SystemExit(f"the gateway did not answer 503 temporarily_unavailable with Retry-After: {refused!r}")
    subprocess.run(os.environ["RESTORE_CMD"], shell=True, check=True)


asyncio.run(main())
