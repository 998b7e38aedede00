"""Handler: the user's code for one queue, and the checks made when it is registered."""

from __future__ import annotations

import functools
import inspect
import typing
from typing import TYPE_CHECKING, Any, ClassVar, Generic

from pydantic import BaseModel, ValidationError

from simplequeue.errors import ConfigError, InvalidJobError
from simplequeue.job import PayloadT
from simplequeue.validation import as_timeout, check_key

if TYPE_CHECKING:
    from simplequeue.job import Job

__all__ = ["Handler"]


class Handler(Generic[PayloadT]):
    """Subclass it, set `QUEUE`, and implement `process` (async, or sync to run in a thread).

    `process` returns a JobResult, or None for success; an exception counts as a failed
    attempt (retried after backoff) with its text stored in `job.last_error`. Set `Payload`
    to a pydantic model to receive `job.payload` validated; a payload that does not validate
    ends the job as `unprocessable` without calling `process`. `Handler[Model]` sets
    `Payload = Model` and types the jobs: `process(self, queue, job: Job[Model])` sees
    `job.payload` as a `Model`, and `.job(...)` builds a `Job[Model]`.
    """

    QUEUE: ClassVar[str]
    Payload: ClassVar[type[BaseModel] | None] = None
    timeout: ClassVar[float | None] = None
    """Seconds an attempt may take; past it the handler is cancelled and the attempt failed."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "Payload" in vars(cls):
            return  # declared: it wins
        for base in getattr(cls, "__orig_bases__", ()):
            if typing.get_origin(base) is Handler:
                (model,) = typing.get_args(base)
                if isinstance(model, type) and issubclass(model, BaseModel):
                    cls.Payload = model

    @classmethod
    def job(cls, payload: PayloadT | Any, **options: Any) -> Job[PayloadT]:
        """A job for this handler's queue, its payload checked now: a dict (or model)
        that `Payload` refuses raises InvalidJobError here, in the producer, instead of
        ending the job as unprocessable later. `options` are those of `Job`."""
        from simplequeue.job import Job

        queue = getattr(cls, "QUEUE", None)
        check_key(f"{cls.__name__}.QUEUE", queue, required=True, error=ConfigError)
        if cls.Payload is not None:
            try:
                payload = cls.Payload.model_validate(payload)
            except ValidationError as exc:
                raise InvalidJobError(
                    f"payload for {cls.__name__} does not validate: {exc}"
                ) from None
        return Job(str(queue), payload, **options)

    def process(self, queue: Any, job: Job[PayloadT]) -> Any:
        """One attempt of `job`. `queue` is the `SimpleQueue` for an `async def process`,
        and a `BlockingQueue` (the same methods as plain calls) for a sync one; annotate
        it as such in your subclass."""
        raise NotImplementedError(f"{type(self).__name__} must implement process()")

    @functools.cached_property
    def runs_in_thread(self) -> bool:
        """A plain `def process` blocks; it runs in a worker thread to keep the loop free.
        An `async def` behind a decorator that kept its `__wrapped__` is still async."""
        return not inspect.iscoroutinefunction(inspect.unwrap(self.process))

    @classmethod
    def check(cls, handler: object) -> Handler[Any]:
        """Refuse at registration what would only fail later, inside a worker."""
        if isinstance(handler, type) and issubclass(handler, Handler):
            raise ConfigError(f"register an instance of {handler.__name__}, not the class itself")
        if not isinstance(handler, Handler):
            raise ConfigError(f"handlers must subclass simplequeue.Handler, got {handler!r}")
        name = type(handler).__name__
        queue_name = getattr(handler, "QUEUE", None)
        check_key(f"{name}.QUEUE", queue_name, required=True, error=ConfigError)
        if type(handler).process is Handler.process:
            raise ConfigError(f"{name} does not implement process()")
        payload = handler.Payload
        if payload is not None and not (
            isinstance(payload, type) and issubclass(payload, BaseModel)
        ):
            raise ConfigError(f"{name}.Payload must be a pydantic model class, got {payload!r}")
        if handler.timeout is not None:  # seconds from here on, a timedelta included
            seconds = as_timeout(f"{name}.timeout", handler.timeout, error=ConfigError)
            setattr(handler, "timeout", seconds)  # noqa: B010 (a ClassVar, set per instance)
        return handler
