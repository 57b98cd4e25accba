"""The ``icow.rollout.ModelRollout`` front end (proto/rollout.proto): reads and
changes a model's labels and traffic split. It translates; the repository decides."""

from __future__ import annotations

import grpc

from .._proto import rollout_pb2 as rp
from .._proto import rollout_pb2_grpc as rp_grpc
from ..repository.repository import LoadedModel, Repository
from .oip import _rpc  # the same error contract as the v2 front end

SERVICE = "icow.rollout.ModelRollout"


class RolloutService(rp_grpc.ModelRolloutServicer):
    """Serves the routing of a repository's models, in every model control mode:
    moving a label loads nothing."""

    def __init__(self, repository: Repository) -> None:
        self.repository = repository

    @_rpc
    def GetRouting(self, request: rp.GetRoutingRequest, context: grpc.ServicerContext) -> rp.Routing:
        return routing_message(self.repository.get_loaded(request.model_name))

    @_rpc
    def SetRouting(self, request: rp.SetRoutingRequest, context: grpc.ServicerContext) -> rp.Routing:
        split = [(w.target, w.weight) for w in request.split] if request.replace_split else None
        loaded = self.repository.set_routing(request.model_name, labels=dict(request.labels),
                                             removed=list(request.remove_labels), split=split,
                                             expected_generation=request.expected_generation)
        return routing_message(loaded)


def routing_message(loaded: LoadedModel) -> rp.Routing:
    routing = loaded.routing
    return rp.Routing(
        model_name=loaded.name, labels=dict(routing.labels), generation=routing.generation,
        kept_in="memory" if loaded.in_memory else "repository", kept_note=loaded.in_memory,
        split=[rp.Weight(target=t, weight=w) for t, w in routing.split],
        versions=[rp.VersionStatus(version=v, state=s.state, reason=s.reason or loaded.error,
                                   labels=routing.labels_of(v),
                                   in_flight=s.model.stats.pending if s.model is not None else 0)
                  for v, s in sorted(loaded.versions.items())],
    )


def add_to(server: grpc.Server, repository: Repository) -> None:
    rp_grpc.add_ModelRolloutServicer_to_server(RolloutService(repository), server)
