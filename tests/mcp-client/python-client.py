# The official MCP Python SDK's OAuth client, through Postern, to an upstream MCP server that runs
# its own OAuth (the TypeScript SDK's example server with --oauth-strict): ONE connection, ONE
# authorization. The SDK does not retry an authorization within a connection, so this passes only
# when Postern's /authorize discovers the upstream and takes the user through its consent in the
# same browser trip, and the first MCP request already carries the upstream token.
# The browser part is the headless user agent of browser.mjs (sign-in form, consent form,
# redirects through the upstream's authorization server).
#
# python python-client.py GATEWAY_URL EMAIL PASSWORD SERVER_PATH MODE
import asyncio
import json
import subprocess
import sys
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import httpx2
from mcp import Client
from mcp.client.auth import AuthorizationCodeResult, OAuthClientProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import OAuthClientInformationFull, OAuthClientMetadata, OAuthToken

gateway, email, password, server_path, mode = sys.argv[1:6]
here = Path(__file__).parent
redirect_url = "http://127.0.0.1:33421/callback"


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


async def redirect_handler(authorization_url: str) -> None:
    script = (
        "const m = await import('./browser.mjs'); const visits = [];"
        f"const landing = await m.userAgent(process.argv[1], {{ gateway: {json.dumps(gateway)}, email: {json.dumps(email)},"
        f" password: {json.dumps(password)}, redirectPrefix: {json.dumps(redirect_url)}, visits }});"
        "console.log(JSON.stringify({ landing: landing.href, visits }));"
    )
    done = await asyncio.to_thread(
        subprocess.run,
        ["node", "--input-type=module", "-e", script, authorization_url],
        cwd=here,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise RuntimeError(f"the user agent failed: {done.stderr}")
    runs.append(json.loads(done.stdout.strip().splitlines()[-1]))


async def callback_handler() -> AuthorizationCodeResult:
    query = parse_qs(urlparse(runs[-1]["landing"]).query)
    if "code" not in query:
        raise RuntimeError(f"no code: {runs[-1]['landing']}")
    first = lambda name: query.get(name, [None])[0]  # noqa: E731
    return AuthorizationCodeResult(code=first("code"), state=first("state"), iss=first("iss"))


async def main() -> None:
    url = gateway + server_path
    auth = OAuthClientProvider(
        server_url=url,
        client_metadata=OAuthClientMetadata(
            client_name="postern-python-client",
            redirect_uris=[redirect_url],
            grant_types=["authorization_code", "refresh_token"],
            response_types=["code"],
            token_endpoint_auth_method="none",
        ),
        storage=Memory(),
        redirect_handler=redirect_handler,
        callback_handler=callback_handler,
    )
    async with httpx2.AsyncClient(auth=auth, timeout=30) as http:
        async with Client(streamable_http_client(url, http_client=http), mode=mode) as client:
            result = await client.call_tool("greet", {"name": "Ada"})
    text = json.dumps(result.model_dump(mode="json"))
    if result.is_error or "Hello, Ada" not in text:
        raise SystemExit(f"unexpected result: {text}")
    if len(runs) != 1:
        raise SystemExit(f"{len(runs)} authorization runs, expected one")
    visits = runs[0]["visits"]
    consents = [v for v in visits if not v.startswith(gateway) and urlparse(v).path.endswith("/authorize")]
    if len(consents) != 1:
        raise SystemExit(f"the upstream's authorization was visited {len(consents)} times: {visits}")
    print(f"ok: Python SDK ({mode}) {server_path} greet -> {text[:100]}; one connection, one authorization, upstream consent in the same trip")


asyncio.run(main())
