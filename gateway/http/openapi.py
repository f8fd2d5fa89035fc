"""The OpenAPI document of the API (uploads, jobs, link refresh and revoke),
served at ``/api/v1/openapi.json``.

``docs/openapi.json`` is this document written out
(``python -m gateway.http.openapi > docs/openapi.json``); a test checks the
two are identical, so the published description never drifts from the code.
"""
from __future__ import annotations

import json
from typing import Any

_ERROR = {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}}
_STORED: dict[str, Any] = {
    "type": "object",
    "required": ["downloadUrl", "fileName", "fileSize", "s3Key"],
    "properties": {
        "downloadUrl": {"type": "string", "description": "the secure, expiring link for agents"},
        "fileName": {"type": "string"},
        "fileSize": {"type": "integer", "minimum": 1, "description": "decoded size in bytes"},
        "s3Key": {"type": "string", "description": "the object key (named s3Key on every backend)"},
        "cleaned": {"type": "string",
                    "description": "only when the file stored is the upload disarmed (the route's disarm "
                                   "settings): what was removed, in the words of the mail notice "
                                   "(\"scripts removed\"); fileName, fileSize and the link are the cleaned "
                                   "file's, the original is kept in quarantine"},
    },
}


_TEXT = {"type": "string", "minLength": 1, "pattern": "\\S"}


def _err(text: str) -> dict[str, Any]:
    return {"description": text, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def _json(schema: str) -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}}


def _json_post(operation_id: str, summary: str, request: str, responses: dict[str, Any]) -> dict[str, Any]:
    """A path whose one operation is a POST of a JSON body."""
    return {"post": {"operationId": operation_id, "summary": summary,
                     "requestBody": {"required": True, "content": _json(request)}, "responses": responses}}


def document() -> dict[str, Any]:
    """The OpenAPI 3.0 document."""
    auth = {"401": _err("missing bearer API key"), "403": _err("invalid API key")}
    return {
        "openapi": "3.0.3",
        "info": {"title": "attachment-gateway API", "version": "1",
                 "description": "Upload an attachment from a contact-centre flow and get a secure link; "
                                "refresh or revoke links from a CRM or agent desktop."},
        "security": [{"bearer": []}],
        "paths": {
            "/api/v1/upload/attachment": {
                "post": {
                    "operationId": "uploadAttachment",
                    "summary": "Store a file and get a secure, expiring link",
                    "parameters": [
                        {"name": "X-Filename", "in": "header", "required": True,
                         "schema": {"type": "string", "minLength": 1, "pattern": "\\S"}},
                        {"name": "X-CustomerId", "in": "header", "required": True,
                         "description": "the customer id as the CRM has it, kept as given (case too) for "
                                        "authorisation and audit; no control or invisible format characters",
                         "schema": {"type": "string", "minLength": 1, "maxLength": 128, "pattern": "\\S"}},
                        # RFC 7240: preferences the server does not know are ignored, so any value is valid.
                        {"name": "Prefer", "in": "header", "required": False, "schema": {"type": "string"},
                         "description": "respond-async: answer 202 at once and finish in the background"},
                    ],
                    # OpenAPI 3.0 cannot tie the body's schema to a header, so
                    # the base64 form is described here rather than as a parameter.
                    "requestBody": {"required": True, "description": (
                        "The file. Raw bytes; or, with the header `Content-Transfer-Encoding: base64`, the file "
                        "as base64 text (whitespace allowed). Any other Content-Transfer-Encoding than base64, "
                        "binary or 8bit is answered 400."), "content": {
                        "application/octet-stream": {
                            "schema": {"type": "string", "format": "binary", "minLength": 1}}}},
                    "responses": {
                        "200": {"description": "stored", "content": {"application/json": {
                            "schema": {"$ref": "#/components/schemas/Stored"}}}},
                        "202": {"description": "accepted; poll statusUrl", "content": {"application/json": {
                            "schema": {"$ref": "#/components/schemas/Accepted"}}},
                            "links": {"GetJob": {"operationId": "getJob",
                                                 "parameters": {"jobId": "$response.body#/jobId"}}}},
                        "400": _err("empty file, missing header, invalid X-CustomerId or invalid base64"),
                        **auth,
                        "413": _err("file larger than api.max_upload_size"),
                        "415": _err("refused by the content policies or by disarm (active content, "
                                    "not checkable, over disarm.max_size)"),
                        "503": _err("storage unavailable; retry"),
                    },
                }
            },
            "/api/v1/jobs/{jobId}": {
                "get": {
                    "operationId": "getJob",
                    "summary": "The state of an asynchronous upload",
                    "parameters": [{"name": "jobId", "in": "path", "required": True,
                                    "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"}}],
                    "responses": {
                        "200": {"description": "the job", "content": {"application/json": {
                            "schema": {"$ref": "#/components/schemas/Job"}}}},
                        **auth,
                        "404": _err("no such job"),
                        "503": _err("storage unavailable; retry"),
                    },
                }
            },
            "/api/v1/links/refresh": _json_post(
                "refreshLink", "A fresh link for the agent named, when that agent may see the customer",
                "RefreshRequest", {"200": {"description": "a fresh link and token", "content": _json("Refreshed")},
                                   "400": _err("not a JSON object with token and agent_id"),
                                   **auth,
                                   "403": _err("invalid API key, a token that is not ours (forged, retired key), "
                                               "or the agent not allowed to see the customer"),
                                   "404": _err("the link's object is gone"),
                                   "410": _err("the link was revoked"),
                                   "503": _err("storage unavailable; retry")}),
            "/api/v1/links/revoke": _json_post(
                "revokeLinks", "Revoke every link to an object, a customer's files or a message's files",
                "RevokeRequest", {"200": {"description": "revoked in every store", "content": _json("Revoked")},
                                  "400": _err("not exactly one of object, customer, message_id"),
                                  **auth,
                                  "503": _err("a store unavailable; retry")}),
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": _ERROR,
                "Stored": _STORED,
                "Accepted": {"type": "object", "required": ["jobId", "statusUrl"], "properties": {
                    "jobId": {"type": "string"}, "statusUrl": {"type": "string"}}},
                "Job": {"type": "object", "required": ["jobId", "status", "statusUrl"], "properties": {
                    "jobId": {"type": "string"},
                    "status": {"type": "string", "enum": ["PENDING", "COMPLETE", "FAILED"]},
                    "statusUrl": {"type": "string"},
                    "error": {"type": "string", "description": "why, when FAILED"},
                    **_STORED["properties"]}},
                "RefreshRequest": {"type": "object", "required": ["token", "agent_id"], "properties": {
                    "token": {**_TEXT, "description": "the token of the link (the last part of its URL)"},
                    "agent_id": {**_TEXT, "description": "the agent the caller acts for, authorised as at a click"}}},
                "Refreshed": {"type": "object", "required": ["url", "token", "expires"], "properties": {
                    "url": {"type": "string"}, "token": {"type": "string"},
                    "expires": {"type": "integer", "description": "Unix seconds"}}},
                "RevokeRequest": {
                    "type": "object",
                    "properties": {"object": {**_TEXT, "description": "an object key"},
                                   "customer": {**_TEXT, "description": "a customer id"},
                                   "message_id": {**_TEXT, "description": "a Message-ID, with or without <>"},
                                   "reason": {"type": "string", "description": "kept in the marker and audited"}},
                    "oneOf": [{"required": ["object"]}, {"required": ["customer"]}, {"required": ["message_id"]}]},
                "Revoked": {"type": "object", "required": ["revoked"], "properties": {"revoked": {
                    "type": "array", "items": {"type": "object", "required": ["store", "revoked", "marker"],
                                               "properties": {"store": {"type": "string"},
                                                              "revoked": {"type": "string",
                                                                          "enum": ["object", "customer", "message"]},
                                                              "marker": {"type": "string"}}}}}},
            },
        },
    }


def text() -> str:
    """The document as published in docs/openapi.json."""
    return json.dumps(document(), indent=2, sort_keys=False) + "\n"


if __name__ == "__main__":
    print(text(), end="")
