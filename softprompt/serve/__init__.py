"""The multi-task inference service: one frozen LM, every task's prompt pulled from the registry.

The paper's economic argument made concrete: the base model is loaded once; each served task costs
only its [P, E] prompt. Requests of any task go into one queue; a micro-batcher drains it for up to
`max_wait_ms` or `max_batch_size` rows and scores the whole batch in one worker call
(`softprompt.scoring.mixed_label_scores`: on a GPU one forward with per-example prompts
[B, P, E]; on CPU one forward per prompt, each running its prefix once). An ensemble task
contributes N rows per request, one per prompt, and its answer is the majority vote
(`softprompt.ensemble.majority_vote`).

Prompts come from the registry by task and alias (or the N newest / N pinned versions for an
ensemble). `pull` verifies each blob's sha256 and the base-model fingerprint, and the service
checks every manifest again (a template that renders plain fields, distinct label words); a prompt
that fails is never served: the task keeps its previous prompt (or answers 503 with the reason if
it never had one) and the other tasks are unaffected. A poller (and POST /v1/reload) picks up
moved aliases without a restart.

Each request is validated and tokenized before it joins a batch, so a bad one fails alone (422):
fields are strings or finite numbers (objects only where the template reads a dotted field), and
text that is not valid Unicode is refused. A batch whose scoring fails is scored again request by
request, so only the request that fails alone answers 500.

Endpoints: POST /v1/classify, GET /v1/tasks (every served task with its status), POST /v1/reload,
GET /metrics (Prometheus), GET /healthz (liveness), GET /readyz (readiness; each task's versions
and last error only with the token); the OpenAPI schema at /openapi.json. With a token
configured, every request but /healthz and /readyz needs exactly one `Authorization: Bearer
<token>` header (compared in constant time). Request bodies over `max_body_bytes` are refused
(413) before any parsing, request heads over `max_header_bytes` too (431), and a connection that
stalls in a request's head or body is closed after `header_timeout_seconds` /
`body_timeout_seconds` (408 for the body). With `metrics_port` set, the same metrics
are also served without the token on a listener of their own, for a scraper that holds no token
(Prometheus pod annotations); /metrics on the main port keeps requiring it.

Modules, in the order a request meets them:
- config.py: ServeConfig and TaskServing, the settings.
- protocol.py: the HTTP/1.1 connection under uvicorn, with its head size limit and deadlines.
- guard.py: the ASGI guard, bearer token and body size and deadline.
- state.py: the read-only registry view and a task's verified prompts (TaskState).
- requests.py: the request and response models, input checks and rendering.
- metrics.py: the Prometheus metrics.
- batcher.py: MicroBatcher, one forward per mixed-task batch.
- service.py: Service, which owns the model, the task states, the batcher and the poller.
- http.py: create_app, the FastAPI app behind the guard.
- cli.py: the `softprompt serve` subcommand.
"""
