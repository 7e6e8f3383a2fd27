"""How the app answers what goes wrong: every refusal and failure is ``{"detail": "<field>:
<reason>"}`` with its status, never an HTML page or a traceback."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from tasks.core.refusals import UNPROCESSABLE, InputError
from tasks.serving.model import log

BAD_REQUEST = 400


def add_problem_handlers(app: FastAPI) -> None:
    """Answer refusals (InputError), FastAPI's own validation and HTTP errors, and a client
    that hung up, each as one JSON line."""
    app.add_exception_handler(InputError, _input_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(ClientDisconnect, _client_gone)


def problem(status: int, detail: str) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status)


async def _input_error(request: Request, error: InputError) -> JSONResponse:
    return problem(error.status, str(error))


async def _validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
    first = error.errors()[0] if error.errors() else {"loc": ("body",), "msg": "invalid"}
    where = ".".join(str(part) for part in first["loc"] if part != "body") or "body"
    return problem(UNPROCESSABLE, f"{where}: {first['msg']}")


async def _http_error(request: Request, error: HTTPException) -> JSONResponse:
    return problem(error.status_code, str(error.detail))


async def _client_gone(request: Request, error: ClientDisconnect) -> Response:
    """A client that hangs up mid-request is one line in the log, not an ASGI traceback."""
    client = f"{request.client.host}:{request.client.port}" if request.client else "a client"
    log.info(
        "serve: %s disconnected before %s %s was read", client, request.method, request.url.path
    )
    return Response(status_code=BAD_REQUEST)  # nobody is listening; uvicorn drops it
