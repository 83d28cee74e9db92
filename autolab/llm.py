"""The one gateway to language models: litellm behind retries, caps, cost and token accounting.

Only this module imports litellm, and only on the first call (importing autolab stays
fast). Any litellm model string works: hosted APIs (``openai/gpt-4o-mini``,
``anthropic/...``), a local vLLM (``hosted_vllm/...`` or ``openai/<name>`` with an
``api_base``) or Ollama (``ollama/llama3``). litellm's standard environment variables
(``OPENAI_API_KEY``, ``OPENAI_API_BASE``, ...) are honored when no key or base is given.

Every attempt is one row of ``llm_calls`` in the research log, written when the attempt
starts (state ``in_flight``) and completed when it returns (model, tokens, cost, latency,
attempt, error); a row left in flight by a killed process is marked ``interrupted`` at the
next loop start. The spending caps count every row (in flight ones included) and are
checked before each attempt, so they hold across threads, processes and resumes. One
call gives up after ``deadline_s`` in all (retries and waits included), so a dead server
cannot hold the loop for ``max_retries x timeout_s``. Models litellm cannot price (local
servers, custom names) cost $0 unless a price per million tokens is given
(``input_cost_per_mtok`` / ``output_cost_per_mtok``).

    llm = LLM(LLMConfig("openai/gpt-4o-mini", max_cost=2.0), lab.log)
    reply = llm.complete([{"role": "user", "content": "..."}], purpose="propose")
"""

from __future__ import annotations

import math
import os
import random
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import AutolabError, BudgetExceeded

if TYPE_CHECKING:  # pragma: no cover
    from .log import ResearchLog

__all__ = [
    "LLM", "LLMConfig", "LLMReply", "LLMError", "LLMAuthError", "LLMRequestError", "LLMUnavailable",
    "parse_llm_spec", "build_llm", "preload_litellm",
]

# HTTP statuses worth another try: timeouts, conflicts, rate limits and server-side trouble.
_RETRYABLE_STATUS = {408, 409, 425, 429}


class LLMError(AutolabError):
    """A language-model call failed for good (after retries and fallbacks)."""


class LLMAuthError(LLMError):
    """The model server refused the credentials (401/403)."""


class LLMRequestError(LLMError):
    """The model server rejected the request itself (400/404/422: unknown model, prompt too long, ...)."""


class LLMUnavailable(LLMError):
    """Every attempt on every model failed with a transient error (429/5xx/timeout/connection)."""


@dataclass(frozen=True)
class LLMConfig:
    """How to reach a model, and how much the whole lab may spend on it."""

    model: str                          # any litellm model string
    api_base: str | None = None         # else litellm honors OPENAI_API_BASE / OPENAI_BASE_URL etc.
    api_key: str | None = None          # else litellm reads the provider's standard env var
    fallbacks: tuple[str, ...] = ()     # tried in order after the primary's retries are spent; api_base and
                                        # api_key apply to those of the primary's provider only
    temperature: float = 0.7
    max_tokens: int = 4096
    timeout_s: float = 120.0
    max_retries: int = 4                # extra attempts per model on 429 / 5xx / timeouts / connection errors
    max_cost: float | None = None       # USD cap over the whole lab (sum of llm_calls.cost in the log)
    max_calls: int | None = None        # cap on recorded attempts over the whole lab
    retry_base_s: float = 1.0           # backoff: base * 2**(n-1), times a jitter in [0.5, 1.5)
    retry_max_s: float = 60.0           # longest single wait (a Retry-After header is honored up to this)
    deadline_s: float | None = 300.0    # one complete() call gives up after this long in all (None: no limit)
    input_cost_per_mtok: float | None = None   # USD per million prompt tokens, for models litellm cannot price
    output_cost_per_mtok: float | None = None  # USD per million completion tokens (both given: they replace litellm's price)
    extra: dict[str, Any] = field(default_factory=dict, hash=False)  # passed through to litellm.completion

    def __post_init__(self) -> None:
        if not self.model or not isinstance(self.model, str):
            raise LLMError("LLMConfig.model must be a litellm model string, e.g. 'openai/gpt-4o-mini'")
        if isinstance(self.fallbacks, (list, str)):
            object.__setattr__(self, "fallbacks", (self.fallbacks,) if isinstance(self.fallbacks, str) else tuple(self.fallbacks))
        if self.max_retries < 0:
            raise LLMError(f"max_retries is {self.max_retries}; use 0 or more (--llm-retries)")
        if self.deadline_s is not None and not self.deadline_s > 0:
            raise LLMError(f"deadline_s is {self.deadline_s}; use a number of seconds above 0 (--llm-deadline)")
        if not self.timeout_s > 0:
            raise LLMError(f"timeout_s is {self.timeout_s}; use a number of seconds above 0 (--llm-timeout)")
        for name in ("input_cost_per_mtok", "output_cost_per_mtok"):
            v = getattr(self, name)
            if v is not None and v < 0:
                raise LLMError(f"{name} is {v}; a price is 0 or more USD per million tokens")

    @property
    def custom_price(self) -> bool:
        """A price per million tokens was given (it replaces litellm's price map)."""
        return self.input_cost_per_mtok is not None or self.output_cost_per_mtok is not None

    @property
    def models(self) -> tuple[str, ...]:
        return (self.model, *self.fallbacks)

    def __repr__(self) -> str:  # never show the key
        key = "***" if self.api_key else None
        return (f"LLMConfig(model={self.model!r}, api_base={self.api_base!r}, api_key={key!r}, "
                f"fallbacks={self.fallbacks!r}, max_cost={self.max_cost!r}, max_calls={self.max_calls!r}, "
                f"deadline_s={self.deadline_s!r})")


@dataclass(frozen=True)
class LLMReply:
    text: str
    model: str                 # the model string that answered (the primary or a fallback)
    prompt_tokens: int
    completion_tokens: int
    cost: float                # USD, litellm's price map; 0.0 where the model is unknown to it
    latency_s: float
    finish_reason: str = ""    # "stop", "length" (cut off at max_tokens), ...
    attempt: int = 1           # which attempt of this complete() call answered


def parse_llm_spec(spec: str, **overrides: Any) -> LLMConfig:
    """``"llm:openai/gpt-4o-mini"`` (the CLI's ``--proposer`` value) → :class:`LLMConfig`.

    The ``llm:`` prefix is optional; commas list fallbacks (``llm:openai/a,ollama/b``).
    Keyword overrides (``api_base=``, ``max_cost=``, ``max_calls=``, ...) are set on the
    config; ``None`` values are ignored, so CLI options can be passed straight through.
    """
    body = spec[4:] if spec.startswith("llm:") else spec
    models = [m.strip() for m in body.split(",") if m.strip()]
    if not models:
        raise LLMError(f"{spec!r} names no model; write e.g. llm:openai/gpt-4o-mini")
    kw = {k: v for k, v in overrides.items() if v is not None}
    if "fallbacks" in kw:
        models += list(kw.pop("fallbacks"))
    return LLMConfig(model=models[0], fallbacks=tuple(models[1:]), **kw)


def build_llm(spec: str, *, log: "ResearchLog | None" = None, mock_response: str | list[str] | None = None,
              max_llm_calls: int | None = None, **overrides: Any) -> "LLM":
    """An :class:`LLM` from a CLI-style spec and options, e.g.
    ``build_llm("openai/gpt-4o-mini", log=lab.log, api_base=args.api_base, max_cost=args.max_cost,
    max_llm_calls=args.max_llm_calls)``. ``None`` options are ignored; ``seed`` is accepted and
    ignored (sampling comes from the temperature); unknown options raise LLMError."""
    overrides.pop("seed", None)
    if max_llm_calls is not None:
        overrides["max_calls"] = max_llm_calls
    known = {f for f in LLMConfig.__dataclass_fields__ if f != "model"}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise LLMError(f"unknown LLM option(s) {unknown}; known: {sorted(known)}")
    return LLM(parse_llm_spec(spec, **overrides), log, mock_response=mock_response)


_litellm_mod: Any = None
_import_lock = threading.Lock()
_preload: threading.Thread | None = None


def preload_litellm() -> None:
    """Start importing litellm in a background thread (it takes seconds), so the first call
    does not wait for it; returns at once. Importing autolab itself never imports litellm."""
    global _preload
    with _import_lock:
        if _litellm_mod is not None or _preload is not None:
            return
        _preload = threading.Thread(target=_quiet_import, name="autolab-litellm-import", daemon=True)
        _preload.start()


def _quiet_import() -> None:
    try:
        _litellm()
    except Exception:  # noqa: BLE001 - the first real call imports again and reports the error
        pass


def _litellm() -> Any:
    """Import litellm on first use, without its network fetch of the price map."""
    global _litellm_mod
    if _litellm_mod is None:
        with _import_lock:
            if _litellm_mod is None:
                os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
                import litellm

                litellm.suppress_debug_info = True   # no "Give Feedback / Get Help" banners on errors
                if hasattr(litellm, "telemetry"):
                    litellm.telemetry = False
                _litellm_mod = litellm
    return _litellm_mod


class _Failure:
    """One failed attempt, classified."""

    def __init__(self, model: str, exc: BaseException, key: str | None):
        self.model, self.exc = model, exc
        status = getattr(exc, "status_code", None)
        self.status: int | None = status if isinstance(status, int) else None
        name = type(exc).__name__
        if name in ("Timeout", "APITimeoutError", "APIConnectionError", "ServiceUnavailableError",
                    "InternalServerError", "RateLimitError", "BadGatewayError"):
            self.retryable = True
        elif self.status is not None:
            self.retryable = self.status in _RETRYABLE_STATUS or self.status >= 500
        else:  # an exception without a status: a bug or a local problem, retrying will not help
            self.retryable = isinstance(exc, (TimeoutError, ConnectionError))
        msg = str(exc).replace("\n", " ").strip()
        if key:
            msg = msg.replace(key, "***")
        self.message = f"{name}{f' {self.status}' if self.status else ''}: {msg[:500]}"

    def retry_after(self) -> float | None:
        for headers in (getattr(self.exc, "litellm_response_headers", None),
                        getattr(getattr(self.exc, "response", None), "headers", None)):
            try:
                value = headers.get("retry-after") if headers is not None else None
                if value is not None:
                    return max(0.0, float(value))
            except (TypeError, ValueError, AttributeError):
                continue
        return None


class LLM:
    """A configured model with retries, fallbacks, caps and a log of every attempt."""

    def __init__(self, config: LLMConfig, log: "ResearchLog | None" = None, *,
                 mock_response: str | list[str] | None = None, preload: bool = True):
        self.config = config
        self.log = log
        self._mock = list(mock_response) if isinstance(mock_response, (list, tuple)) else mock_response
        if self._mock == []:
            raise LLMError("mock_response=[] gives no answer; pass a string or a non-empty list of strings")
        self._lock = threading.RLock()   # re-entrant: check_budget -> totals() under the same lock
        self._calls = 0          # in-memory totals (attempts counted when they start), for the caps without a log
        self._cost = 0.0
        self._inflight = 0       # attempts under way: counted by the caps, so threads cannot overshoot them
        self.sleep = time.sleep  # tests may replace it
        if preload:
            preload_litellm()

    @classmethod
    def from_spec(cls, spec: str, log: "ResearchLog | None" = None, **overrides: Any) -> "LLM":
        """``LLM.from_spec("llm:openai/gpt-4o-mini", lab.log, api_base=args.api_base, max_cost=args.max_cost)``."""
        return cls(parse_llm_spec(spec, **overrides), log)

    @property
    def model(self) -> str:
        return self.config.model

    def __repr__(self) -> str:
        return f"LLM({self.config!r})"

    # ------------------------------------------------------------------ caps
    def totals(self) -> dict[str, float]:
        if self.log is not None:
            return self.log.llm_totals()
        with self._lock:
            return {"calls": self._calls, "cost": self._cost}

    def check_budget(self, pending: int = 0, need: int = 1) -> None:
        """Raise BudgetExceeded unless the caps leave room for ``need`` more attempts (called
        before every attempt with need=1; the loop asks for a whole proposal's worth before
        starting one). ``pending`` counts attempts under way that are not in the log yet."""
        cfg = self.config
        if cfg.max_cost is None and cfg.max_calls is None:
            return
        t = dict(self.totals())
        t["calls"] += pending
        where = f"in {self.log.path}" if self.log is not None else "in this process"
        if cfg.max_calls is not None and t["calls"] + need > cfg.max_calls:
            room = f" ({need} needed for the next step)" if need > 1 else ""
            raise BudgetExceeded(
                f"LLM call cap reached: {int(t['calls'])} calls recorded {where}, cap --max-llm-calls {cfg.max_calls}"
                f"{room}; raise --max-llm-calls (LLMConfig.max_calls) to continue")
        if cfg.max_cost is not None and t["cost"] >= cfg.max_cost:
            raise BudgetExceeded(
                f"LLM cost cap reached: ${t['cost']:.4f} spent {where}, cap --max-cost {cfg.max_cost:g} USD; "
                "raise --max-cost (LLMConfig.max_cost) to continue")

    # ------------------------------------------------------------------ calls
    def _next_mock(self) -> str | None:
        if isinstance(self._mock, list):
            with self._lock:
                if not self._mock:
                    return None
                return self._mock.pop(0) if len(self._mock) > 1 else self._mock[0]
        return self._mock

    def _kwargs(self, model: str, messages: list[dict], timeout_s: float | None = None) -> dict[str, Any]:
        cfg = self.config
        kw: dict[str, Any] = {
            "model": model, "messages": messages, "temperature": cfg.temperature, "max_tokens": cfg.max_tokens,
            "timeout": cfg.timeout_s if timeout_s is None else timeout_s, "max_retries": 0, "drop_params": True,
        }
        # api_base / api_key belong to the primary's provider; a fallback on another provider
        # (anthropic/..., ollama/...) uses that provider's own defaults and environment variables
        mine = model == cfg.model or model.split("/", 1)[0] == cfg.model.split("/", 1)[0]
        base = cfg.api_base if mine else None
        if base:
            kw["api_base"] = base
        key = cfg.api_key if mine else None
        custom_base = base or os.environ.get("OPENAI_API_BASE") or os.environ.get("OPENAI_BASE_URL")
        if key is None and custom_base and model.startswith("openai/") and not os.environ.get("OPENAI_API_KEY"):
            key = "sk-no-key"  # a local OpenAI-compatible server without auth; the client insists on some key
        if key is not None:
            kw["api_key"] = key
        kw.update(cfg.extra)
        if self._mock is not None:
            mock = self._next_mock()
            if mock is not None:
                kw["mock_response"] = mock
        return kw

    def _start(self, model: str, purpose: str, thread: str | None, idea_id: str | None, attempt: int,
               request: Any) -> int | None:
        """Check the caps and record the attempt as started, atomically for this process's threads."""
        with self._lock:
            self.check_budget()   # started attempts are already counted: in the log, or in self._calls
            self._inflight += 1
            self._calls += 1
            try:
                if self.log is None:
                    return None
                return self.log.llm_call_start(model=model, purpose=purpose, thread=thread, idea_id=idea_id,
                                               attempt=attempt, request=request)
            except BaseException:
                self._inflight -= 1
                self._calls -= 1
                raise

    def _end(self, seq: int | None, **row: Any) -> None:
        with self._lock:
            self._inflight -= 1
            self._cost += float(row.get("cost") or 0.0)
        if self.log is not None and seq is not None:
            self.log.llm_call_end(seq, **row)

    def complete(self, messages: list[dict], *, purpose: str = "", thread: str | None = None,
                 idea_id: str | None = None) -> LLMReply:
        """Send one chat request; retry transient errors, then try the fallbacks, within
        ``deadline_s`` in all.

        Raises BudgetExceeded (a cap is reached), LLMAuthError / LLMRequestError (the server
        refused; retrying will not help) or LLMUnavailable (every attempt failed transiently,
        or the deadline passed).
        """
        if not messages:
            raise LLMError("complete() needs at least one message")
        litellm = _litellm()
        cfg = self.config
        failures: list[_Failure] = []
        attempt = 0
        t_call = time.monotonic()
        request = {"messages": messages, "temperature": cfg.temperature, "max_tokens": cfg.max_tokens}

        def left() -> float:
            return math.inf if cfg.deadline_s is None else cfg.deadline_s - (time.monotonic() - t_call)

        for model in cfg.models:
            for n in range(cfg.max_retries + 1):
                if left() <= 0:
                    raise self._final_error(failures, deadline=True)
                attempt += 1
                # the full request once per call (and with the answer); later attempts point back to it
                req = {**request, "model": model} if attempt == 1 else {"model": model, "same_request_as_attempt": 1}
                kw = self._kwargs(model, messages, timeout_s=min(cfg.timeout_s, max(left(), 0.5)))
                seq = self._start(model, purpose, thread, idea_id, attempt, req)
                t0 = time.monotonic()
                try:
                    resp = litellm.completion(**kw)
                    text, finish = _content(resp)
                except Exception as e:  # noqa: BLE001 - classified below, re-raised as LLMError
                    f = _Failure(model, e, kw.get("api_key"))
                    failures.append(f)
                    self._end(seq, ok=False, latency_s=time.monotonic() - t0, error=f.message)
                    if not f.retryable:
                        break                      # this model will not answer: next fallback
                    if n < cfg.max_retries:
                        wait = self._backoff(n + 1, f.retry_after())
                        if wait >= left():
                            raise self._final_error(failures, deadline=True) from None
                        self.sleep(wait)
                    continue
                except BaseException:
                    self._end(seq, ok=False, latency_s=time.monotonic() - t0, error="interrupted in this process")
                    raise
                latency = time.monotonic() - t0
                usage = getattr(resp, "usage", None)
                pt = int(getattr(usage, "prompt_tokens", 0) or 0)
                ct = int(getattr(usage, "completion_tokens", 0) or 0)
                cost = self._price(litellm, resp, pt, ct)
                self._end(seq, ok=True, prompt_tokens=pt, completion_tokens=ct, cost=cost, latency_s=latency,
                          response={"text": text, "finish_reason": finish, "served_by": getattr(resp, "model", None)})
                return LLMReply(text=text, model=model, prompt_tokens=pt, completion_tokens=ct, cost=cost,
                                latency_s=latency, finish_reason=finish, attempt=attempt)

        raise self._final_error(failures)

    # ------------------------------------------------------------------ prices
    def _price(self, litellm: Any, resp: Any, prompt_tokens: int, completion_tokens: int) -> float:
        cfg = self.config
        if cfg.custom_price:
            return (prompt_tokens * (cfg.input_cost_per_mtok or 0.0)
                    + completion_tokens * (cfg.output_cost_per_mtok or 0.0)) / 1e6
        return _cost(litellm, resp)

    def unpriced_models(self) -> list[str]:
        """The configured models whose calls would be recorded at $0: litellm has no price for
        them and no ``input_cost_per_mtok`` / ``output_cost_per_mtok`` was given."""
        if self.config.custom_price:
            return []
        litellm = _litellm()
        out = []
        for model in self.config.models:
            try:
                info = litellm.get_model_info(model)
                priced = bool((info.get("input_cost_per_token") or 0) or (info.get("output_cost_per_token") or 0))
            except Exception:  # noqa: BLE001 - litellm raises for models it does not know
                priced = False
            if not priced:
                out.append(model)
        return out

    def _backoff(self, n: int, retry_after: float | None) -> float:
        cfg = self.config
        delay = min(cfg.retry_max_s, cfg.retry_base_s * 2 ** (n - 1)) * (0.5 + random.random())
        if retry_after is not None:
            delay = max(delay, min(retry_after, cfg.retry_max_s))
        return delay

    def _where(self, model: str) -> str:
        if self.config.api_base and model.split("/", 1)[0] == self.config.model.split("/", 1)[0]:
            return self.config.api_base
        base = os.environ.get("OPENAI_API_BASE") or os.environ.get("OPENAI_BASE_URL")
        if model.startswith("openai/") and base:
            return base
        try:
            provider = _litellm().get_llm_provider(model)
            return provider[3] or f"{provider[1]}'s default API base"
        except Exception:  # noqa: BLE001
            return f"the server of {model}"

    def _key_hint(self, model: str) -> str:
        try:
            missing = _litellm().validate_environment(model).get("missing_keys") or []
        except Exception:  # noqa: BLE001
            missing = []
        if missing:
            return (f"set {' and '.join(missing)} in the environment (in Python: LLMConfig(api_key=...)), or point "
                    "--api-base at a server that needs none")
        return "check the key in the environment (in Python: LLMConfig(api_key=...)) and that --api-base points at the right server"

    def _final_error(self, failures: list[_Failure], deadline: bool = False) -> LLMError:
        tried = "; ".join(f"{f.model}: {f.message[:200]}" for f in failures[-4:]) or "no attempt finished"
        hard = [f for f in failures if not f.retryable]
        if hard:
            f = hard[0]
            where = self._where(f.model)
            if f.status in (401, 403):
                return LLMAuthError(f"the model server ({where}) answered {f.status} for {f.model}: "
                                    f"{self._key_hint(f.model)}. ({tried})")
            if f.status == 404:
                return LLMRequestError(f"the model server ({where}) answered 404 for {f.model}: the model name or "
                                       f"--api-base is wrong; check the model string (litellm form provider/name) "
                                       f"and the server's /v1/models. ({tried})")
            if f.status is not None:
                return LLMRequestError(f"the model server ({where}) rejected the request with {f.status} for "
                                       f"{f.model} (a prompt too long, an unsupported parameter?); see the error, "
                                       f"fix the model, lower --max-tokens or drop an --llm-param. ({tried})")
            return LLMRequestError(f"calling {f.model} failed before reaching a server: {f.message}. Check the model "
                                   f"string and litellm's provider settings. ({tried})")
        n = len(failures)
        models = ", ".join(self.config.models)
        if deadline:
            return LLMUnavailable(
                f"no answer from {models} within --llm-deadline {self.config.deadline_s:g} s ({n} failed attempts: "
                f"{tried}); the server ({self._where(self.config.model)}) is busy, down or unreachable: start it or "
                "fix --api-base, then run the same command again to resume; or raise --llm-deadline, add --fallbacks")
        return LLMUnavailable(f"no answer from {models} after {n} attempts ({tried}); the server "
                              f"({self._where(self.config.model)}) is busy, down or unreachable: start it or fix "
                              "--api-base and run the same command again to resume, add --fallbacks MODEL, "
                              "or raise --llm-retries")


def _content(resp: Any) -> tuple[str, str]:
    choices = getattr(resp, "choices", None) or []
    if not choices:
        raise _EmptyReply("the model answered with no choices")
    choice = choices[0]
    message = getattr(choice, "message", None)
    text = getattr(message, "content", None) or ""
    return str(text), str(getattr(choice, "finish_reason", "") or "")


class _EmptyReply(Exception):
    """An answer without any choice: treated like a server error and retried."""

    status_code = 502


def _cost(litellm: Any, resp: Any) -> float:
    try:
        cost = litellm.completion_cost(completion_response=resp)
        if cost:
            return float(cost)
    except Exception:  # noqa: BLE001 - models missing from the price map cost 0
        pass
    try:
        hidden = getattr(resp, "_hidden_params", None) or {}
        return float(hidden.get("response_cost") or 0.0)
    except (TypeError, ValueError):
        return 0.0
