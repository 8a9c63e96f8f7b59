"""The app ``kdlab ui`` serves (entry point ``mlflow.app: kdlab``): MLflow's own server app, except that its bare
address ("/" without a query) is redirected to kdlab's runs view in model-training mode (MLflow 3's home page is
its GenAI view). The view's path comes from ``kdlab ui`` (:data:`kdlab.infra.ui.HOME_ENV`), which wrote it to the
store. A query marks the target, since the browser does not send the fragment back: "/" is not redirected twice.
"""
from __future__ import annotations

import os

from mlflow.server.fastapi_app import app as mlflow_app

from kdlab.infra.ui import HOME_ENV


class _App:
    """An ASGI app object (not a function: MLflow would take a function for an app factory)."""

    def __init__(self, inner, home: str):
        self.inner, self.home = inner, home

    async def __call__(self, scope, receive, send):
        if self.home and scope["type"] == "http" and scope["path"] == "/" and not scope.get("query_string"):
            target = f"/?view=kdlab{self.home}".encode()
            await send({"type": "http.response.start", "status": 302,
                        "headers": [(b"location", target), (b"content-length", b"0")]})
            await send({"type": "http.response.body", "body": b""})
            return
        await self.inner(scope, receive, send)


app = _App(mlflow_app, os.environ.get(HOME_ENV, ""))
