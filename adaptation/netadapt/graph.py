"""Network analysis: which channels can be pruned together, and how pruning changes every layer.

Torch-Pruning's DependencyGraph finds the *groups* of coupled channels (a conv with its BN and the
consumers of its output; a residual stage; a depthwise conv and the pointwise conv feeding it).
NetAdapt shrinks one group per proposal. Groups are named by their root layer's module name, which
stays the same while the network shrinks, so a channel configuration ``{group name: channels}``
describes any pruned network of the same architecture.
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
import torch.nn as nn
import torch_pruning as tp

from devices.measure.signature import LayerSignature
from devices.measure.tracing import trace_layers

ChannelConfig = dict[str, int]
"""Channels of every prunable group, keyed by group name."""

# Modules whose parameters Torch-Pruning knows how to slice.
_KNOWN_PARAM_MODULES = (
    nn.Conv2d, nn.Linear, nn.BatchNorm2d, nn.BatchNorm1d, nn.LayerNorm, nn.PReLU, nn.GroupNorm,
)


class UnsupportedNetwork(ValueError):
    """The network has a layer NetAdapt cannot prune; the message names it and says why."""


@dataclass(frozen=True)
class PrunableGroup:
    """A set of channels that must be removed together."""

    name: str                      # root layer's module name
    channels: int                  # channels in the analysed network
    out_layers: tuple[str, ...]    # conv/linear layers whose outputs are these channels
    in_layers: tuple[str, ...]     # conv/linear layers that consume these channels


@dataclass(frozen=True)
class LayerTemplate:
    """One traced conv/linear call and the groups that set its channel counts."""

    name: str
    signature: LayerSignature
    out_group: str | None
    in_group: str | None
    depthwise: bool
    in_per_channel: int = 1   # inputs per group channel: H·W for a linear fed by a flattened map


def _check_supported(model: nn.Module) -> None:
    for name, module in model.named_modules():
        own = list(module.parameters(recurse=False))
        if own and not isinstance(module, _KNOWN_PARAM_MODULES):
            raise UnsupportedNetwork(
                f"layer '{name}' ({type(module).__name__}) holds parameters of a kind NetAdapt "
                "cannot slice; only Conv2d, Linear and normalisation layers can be pruned")
        if isinstance(module, nn.Conv2d) and 1 < module.groups and not (
                module.groups == module.in_channels == module.out_channels):
            raise UnsupportedNetwork(
                f"layer '{name}' is a grouped convolution (groups={module.groups}); only ordinary "
                "and depthwise convolutions can be pruned")


def _output_layer(model: nn.Module) -> nn.Module:
    """The layer producing the logits: its output channels (the classes) are never pruned."""
    last = None
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            last = module
    if last is None:
        raise UnsupportedNetwork("the network has no Conv2d or Linear layer to prune")
    return last


def build_dependency_graph(model: nn.Module, example_input: torch.Tensor) -> tp.DependencyGraph:
    """Trace ``model`` into a DependencyGraph (autograd must be on, so we force it).

    The output layer is traced too (not ignored): its input channels must follow the pruning of
    the last group; only its output channels are protected, in ``_groups_of``.
    """
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            graph = tp.DependencyGraph().build_dependency(
                model, example_inputs=example_input, verbose=False)
    finally:
        model.train(was_training)
    return graph


def _groups_of(model: nn.Module, graph: tp.DependencyGraph, output_layer: nn.Module):
    """Yield (group name, tp group, out layer names, in layer names) for every prunable group."""
    names = {module: name for name, module in model.named_modules()}
    for group in graph.get_all_groups(ignored_layers=[output_layer],
                                      root_module_types=(nn.Conv2d, nn.Linear)):
        outs, ins = [], []
        for item in group:
            module = item.dep.target.module
            if not isinstance(module, (nn.Conv2d, nn.Linear)):
                continue
            if graph.is_out_channel_pruning_fn(item.dep.handler):
                outs.append(names[module])
            elif graph.is_in_channel_pruning_fn(item.dep.handler):
                ins.append(names[module])
        root = names[group[0].dep.target.module]
        yield root, group, tuple(dict.fromkeys(outs)), tuple(dict.fromkeys(ins))


class NetworkAnalysis:
    """Prunable groups of an architecture and how each layer's shape follows the channel config."""

    def __init__(self, model: nn.Module, example_input: torch.Tensor) -> None:
        _check_supported(model)
        self.example_input = example_input
        output_layer = _output_layer(model)
        graph = build_dependency_graph(model, example_input)
        out_group: dict[str, str] = {}
        in_group: dict[str, str] = {}
        groups: list[PrunableGroup] = []
        modules = dict(model.named_modules())
        for root, _, outs, ins in _groups_of(model, graph, output_layer):
            channels = _out_channels(modules[root])
            groups.append(PrunableGroup(root, channels, outs, ins))
            for name in outs:
                out_group[name] = root
            for name in ins:
                in_group.setdefault(name, root)
        self.groups: list[PrunableGroup] = groups
        self.layers: list[LayerTemplate] = []
        channels_of = {g.name: g.channels for g in groups}
        for traced in trace_layers(model, example_input):
            sig = traced.signature
            depthwise = sig.op == "conv" and sig.groups > 1
            source = out_group.get(traced.name) if depthwise else in_group.get(traced.name)
            per_channel = 1
            if source is not None:
                per_channel, rest = divmod(sig.in_channels, channels_of[source])
                if rest or per_channel < 1:
                    raise UnsupportedNetwork(
                        f"layer '{traced.name}' takes {sig.in_channels} inputs, which is not a "
                        f"multiple of the {channels_of[source]} channels of group '{source}'")
            self.layers.append(LayerTemplate(traced.name, sig, out_group.get(traced.name), source,
                                             depthwise, per_channel))

    @property
    def group_names(self) -> list[str]:
        return [g.name for g in self.groups]

    def original_config(self) -> ChannelConfig:
        return {g.name: g.channels for g in self.groups}

    def signatures(self, config: Mapping[str, int]) -> list[LayerSignature]:
        """Layer signatures of the network pruned to ``config`` (groups not named keep theirs)."""
        result = []
        for layer in self.layers:
            sig = layer.signature
            out_c = config.get(layer.out_group, sig.out_channels) if layer.out_group else sig.out_channels
            in_c = (config.get(layer.in_group, sig.in_channels // layer.in_per_channel)
                    * layer.in_per_channel if layer.in_group else sig.in_channels)
            groups = in_c if layer.depthwise else sig.groups
            result.append(dataclasses.replace(sig, in_channels=in_c, out_channels=out_c, groups=groups))
        return result

    def macs(self, config: Mapping[str, int]) -> int:
        return sum(sig.macs() for sig in self.signatures(config))

    def params(self, config: Mapping[str, int]) -> int:
        return sum(sig.params() for sig in self.signatures(config))


def _out_channels(module: nn.Module) -> int:
    return module.out_channels if isinstance(module, nn.Conv2d) else module.out_features


def _group_importance(group, graph: tp.DependencyGraph, channels: int) -> torch.Tensor:
    """Per-channel squared L2 norm of every coupled conv/linear weight slice, summed over the group.

    Producers contribute their filters (rows, depthwise filters included), consumers the input
    columns that read the channel; a flattened consumer's several columns per channel are mapped
    back to their channel through Torch-Pruning's root indices. (Torch-Pruning's own
    GroupMagnitudeImportance skips depthwise filters, which is why this is not delegated.)
    """
    scores = torch.zeros(channels, dtype=torch.float64)
    for item in group:
        module = item.dep.target.module
        if not isinstance(module, (nn.Conv2d, nn.Linear)):
            continue
        weight = module.weight.detach().double()
        idxs = torch.as_tensor(item.idxs, dtype=torch.long)
        roots = torch.as_tensor(item.root_idxs, dtype=torch.long)
        depthwise = isinstance(module, nn.Conv2d) and module.groups > 1
        if graph.is_out_channel_pruning_fn(item.dep.handler):
            norms = weight[idxs].flatten(1).pow(2).sum(1)
        elif graph.is_in_channel_pruning_fn(item.dep.handler) and not depthwise:
            norms = weight[:, idxs].transpose(0, 1).flatten(1).pow(2).sum(1)
        else:  # a depthwise conv's input side: its filters are counted once, as outputs
            continue
        scores.index_add_(0, roots, norms)
    return scores


class GroupPruner:
    """Prunes one network: scores channels by L2 norm and removes the weakest of chosen groups."""

    def __init__(self, model: nn.Module, example_input: torch.Tensor) -> None:
        _check_supported(model)
        self.model = model
        self.example_input = example_input
        self._output_layer = _output_layer(model)
        self.graph = build_dependency_graph(model, example_input)
        self._groups = {root: (group, outs) for root, group, outs, _ in
                        _groups_of(model, self.graph, self._output_layer)}

    def channels(self) -> ChannelConfig:
        modules = dict(self.model.named_modules())
        return {name: _out_channels(modules[name]) for name in self._groups}

    def importance(self, group_name: str) -> torch.Tensor:
        """L2 importance of each channel of a group (higher = keep)."""
        group, _ = self._group(group_name)
        with torch.no_grad():
            return _group_importance(group, self.graph, self.channels()[group_name]).float()

    def channels_to_keep(self, group_name: str, keep: int) -> list[int]:
        """Indices of the ``keep`` channels with the largest L2 norm, in ascending index order."""
        scores = self.importance(group_name)
        if not 1 <= keep <= len(scores):
            raise ValueError(f"group '{group_name}' has {len(scores)} channels; cannot keep {keep}")
        top = torch.topk(scores, keep, largest=True, sorted=False).indices
        return sorted(top.tolist())

    def prune(self, removals: Mapping[str, Sequence[int]]) -> None:
        """Remove the given channel indices of each group, in place."""
        modules = dict(self.model.named_modules())
        for name, idxs in removals.items():
            if not idxs:
                continue
            self._group(name)  # validates the name
            root = modules[name]
            pruner = self.graph.get_pruner_of_module(root)
            group = self.graph.get_pruning_group(root, pruner.prune_out_channels, list(idxs))
            group.prune()

    def shrink(self, targets: Mapping[str, int]) -> None:
        """Shrink groups to the given channel counts, keeping the channels with the largest L2 norm."""
        current = self.channels()
        removals = {}
        for name, keep in targets.items():
            kept = set(self.channels_to_keep(name, keep))
            removals[name] = [i for i in range(current[name]) if i not in kept]
        self.prune(removals)

    def _group(self, name: str):
        try:
            return self._groups[name]
        except KeyError:
            raise ValueError(f"no prunable group named '{name}'; groups: {sorted(self._groups)}") from None


def pruned_copy(model: nn.Module, example_input: torch.Tensor, targets: Mapping[str, int]) -> nn.Module:
    """A copy of ``model`` with the named groups shrunk to ``targets`` channels by L2 norm."""
    clone = copy.deepcopy(model)
    GroupPruner(clone, example_input).shrink(targets)
    return clone


def rebuild_pruned(model: nn.Module, example_input: torch.Tensor, config: Mapping[str, int]) -> nn.Module:
    """Shrink a freshly built original architecture to ``config`` (first channels kept), in place.

    Used to rebuild a pruned network from its channel configuration before loading its state dict.
    """
    pruner = GroupPruner(model, example_input)
    current = pruner.channels()
    unknown = set(config) - set(current)
    if unknown:
        raise ValueError(f"channel configuration names unknown groups: {sorted(unknown)}")
    removals = {}
    for name, keep in config.items():
        if not 1 <= keep <= current[name]:
            raise ValueError(f"group '{name}' has {current[name]} channels; cannot keep {keep}")
        removals[name] = list(range(keep, current[name]))
    pruner.prune(removals)
    return model
