"""Routes: ``Source -> DurableQueue -> Sink``, and the delivery invariants (DESIGN.md).

1. A source checkpoint commits in the same queue transaction as the events it covers
   (``agent.capture.RouteCapture``, ``DurableQueue.commit_capture``).
2. Upstream positions move only after the events are durable: a source is resumed (and
   acknowledges upstream) only after that commit.
3. A queue row is removed only after the sink confirmed it (``agent.delivery.SinkDelivery``,
   ``DurableQueue.settle``).
4. Event ids are deterministic (``agent.events.event_id``); the queue ignores an id it
   already holds, delivered recently, or discarded.
5. Order is kept per sink in queue order, hence per entity key; only a rejected event
   leaves the order, into the exception queue.

The jobs live in their own modules: translation (``agent.translate``, pure), capture
(``agent.capture``), delivery (``agent.delivery``) and exception retry (``agent.retry``).
"""
from .capture import RouteCapture
from .delivery import SinkDelivery
from .retry import retry_exception
from .translate import Translator, limit_context

__all__ = ["RouteCapture", "SinkDelivery", "Translator", "limit_context", "retry_exception"]
