"""A Flower Grid that hands each message to a ClientApp in this process.

The server's round loop (``run_federation``: sampling, anchor distribution, secure rounds,
checkpoints, metrics) and the ClientApp with its Mods run unchanged; only the transport (a
SuperLink, Ray) is left out, so a whole run of the tiny base takes seconds. A ClientApp that
raises answers with an error reply, as in Flower's simulation engine. Deployment and simulation tests
cover the transport itself.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from uuid import uuid4

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid
from flwr.supercore.run import Run


class InProcessGrid(Grid):
    """``num_nodes`` nodes, partition ``i`` of ``num_nodes`` each, answered one after another.

    ``node_configs`` adds to each node's config (by partition: a device's keys, its own settings), ``run_config``
    is what Flower hands every node as the run's config, and ``tamper`` may rewrite or drop any message on its
    way to a node (a server that lies)."""

    def __init__(self, client_app: ClientApp, num_nodes: int, run_id: int = 1,
                 node_configs: dict[int, dict] | None = None, run_config: dict | None = None,
                 tamper: Callable[[Message], Message | None] | None = None) -> None:
        self._client_app = client_app
        self._run = Run.create_empty(run_id)
        self._contexts = {
            node: Context(run_id=run_id, node_id=node, state=RecordDict(), run_config=dict(run_config or {}),
                          node_config={"partition-id": partition, "num-partitions": num_nodes,
                                       **(node_configs or {}).get(partition, {})})
            for partition, node in enumerate(range(101, 101 + num_nodes))
        }
        self._replies: dict[str, Message] = {}
        self.tamper = tamper

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str,
                       ttl: float | None = None) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self._contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for message in messages:
            message.metadata.__dict__["_message_id"] = str(uuid4())
            message.metadata.__dict__["_run_id"] = self._run.run_id
            delivered = self.tamper(message) if self.tamper else message
            if delivered is not None:  # a dropped message gets no reply
                self._replies[message.metadata.message_id] = self._answer(delivered, message)
            ids.append(message.metadata.message_id)
        return ids

    def context(self, node: int) -> Context:
        return self._contexts[node]

    def _answer(self, message: Message, sent: Message) -> Message:
        """The ClientApp's reply to ``message`` (as a reply to ``sent``, the server's own); an exception becomes an
        error reply, as Flower's simulation engine makes it."""
        try:
            reply = self._client_app(message, self._contexts[message.metadata.dst_node_id])
            return Message(reply.content, reply_to=sent) if not reply.has_error() else reply
        except Exception as error:
            reason = f"{type(error)}:<'{error}'>"
            return Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason), reply_to=sent)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(i) for i in list(message_ids) if i in self._replies]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        return self.pull_messages(self.push_messages(messages))


def simulate_in_this_process(settings: dict, clients: int, rounds: int, folder, run_id: str) -> str | None:
    """What ``stamen simulate`` runs for a campaign or sweep (``simulate_in_subprocess``'s contract), through
    :class:`InProcessGrid`: the same config, round loop, attack tally and report, without Ray."""
    from stamen.server.federation import run_federation
    from stamen.simulations.attack_tally import AttackTally
    from stamen.simulations.client_app import app
    from stamen.simulations.commands import new_simulation_config
    from stamen.simulations.report import write_report

    overrides = [f"{key}={value}" for key, value in {**settings, "run-dir": folder, "run-id": run_id}.items()]
    config = new_simulation_config(None, overrides, clients, rounds)
    write_report(run_federation(InProcessGrid(app, clients), config, extensions=[AttackTally()]))
    return None
