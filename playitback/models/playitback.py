"""PlayItBack: encode, find the salient time segments, replay them at a finer hop, repeat; fuse every playback.

Shape legend: B batch, S playbacks, T0 frames of playback 0, F mel bins, T''/F'' the encoder's token grid, D token
width, K total classes (tasks concatenated).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from playitback.config.choices import REPLAY_RESOLUTIONS, REPLAY_SOURCES
from playitback.models.encoder import Encoder
from playitback.models.output import AnytimeOutput, ModelOutput
from playitback.models.replay import coarse_playback, frame_centres, mask_from_frame_times, random_span_mask, replay
from playitback.models.saliency import saliency_mask
from playitback.models.saliency_interface import PlaybackView, Saliency
from playitback.models.tempr import TemPr


def _tokens_on_grid(encoder: Encoder, spectrogram: Tensor) -> Tensor:
    """[B, T, F] -> encoder tokens on their (time, frequency) grid [B, T'', F'', D]."""
    tokens, (grid_t, grid_f) = encoder.forward_features(spectrogram.unsqueeze(1))
    return tokens.reshape(tokens.shape[0], grid_t, grid_f, tokens.shape[-1])


class EncoderClassifier(nn.Module):
    """The encoder alone (MODEL.PLAYBACK 0): the pretraining stage and the baseline PlayItBack is compared with.

    With `freeze_backbone` only the classifier head trains (a linear probe) and the backbone runs in eval mode.
    """

    def __init__(self, encoder: Encoder, freeze_backbone: bool = False) -> None:
        super().__init__()
        self.encoder = encoder
        self.freeze_backbone = freeze_backbone
        if freeze_backbone:
            for name, param in encoder.named_parameters():
                param.requires_grad_(name.startswith("head."))

    def train(self, mode: bool = True) -> EncoderClassifier:
        super().train(mode)
        if self.freeze_backbone:
            self.encoder.eval()
            self.encoder.head.train(mode)
        return self

    def forward(self, playbacks: Sequence[Tensor]) -> ModelOutput:
        """playbacks[0]: [B, T0, F] -> logits [B, K] and features [B, D] (``Encoder.classify``)."""
        logits, features = self.encoder.classify(playbacks[0].unsqueeze(1))
        return ModelOutput(logits=logits, features=features)


def nominal_hops(num_playbacks: int) -> list[int]:
    """Hops (in ticks) of playbacks that divide the crop exactly: playback i has hop ``L / (i + 1)``, ``L`` the least
    common multiple of 1..S, so frame k of playback i is centred at ``k / (i + 1)`` frames of playback 0."""
    common = math.lcm(*range(1, num_playbacks + 1))
    return [common // (i + 1) for i in range(num_playbacks)]


class PlayItBack(nn.Module):
    """Encoder -> per-playback temporal saliency -> replay of the salient frames at the next playback -> TemPr decoder.

    For playback i the encoder reads the running composite C_i ([B, T0, F]; C_0 is playback 0). Its tokens feed the
    decoder layer i and the saliency module i. The salient frames of C_i are replaced by the frames of playback i+1
    that show the same time (each composite frame carries its source time through every replay, see
    :mod:`playitback.models.replay`) and the result is resized back to T0 frames: C_{i+1}. Everything is fixed-shape
    tensor code with no host synchronisation, so the forward compiles as one graph.

    A frozen encoder (its parameters have requires_grad False) runs in eval mode and without autograd; the saliency
    still trains, because the pooled positive/negative tokens go through the encoder head with gradients.

    Args:
        encoder: the encoder shared by every playback (:class:`~playitback.models.encoder.Encoder`).
        saliency: one saliency module per playback (at least 2), all of one class
            (:class:`~playitback.models.saliency_interface.Saliency`).
        decoder: TemPr with one layer per playback.
        freeze_encoder: keep the encoder's weights fixed.
        hops: ticks between the frames of each playback (samples, from the pyramid's ``playback_hops``), coarsest
            first; frame k of playback i is centred at ``k * hops[i]``. Default: :func:`nominal_hops`, exact when the
            crop divides evenly (real pyramids round the hop to whole samples; passing their hops accounts for that).
        replay_source: what is replayed, for the method and its controls: "saliency" (the salient frames),
            "events" (the frames given to ``forward`` as ``replay_masks``: the annotated events, an oracle),
            "random" (one span per sample at a random place, as long as the salient frames would be), "none"
            (nothing: every playback re-reads playback 0).
        budget: share of the frames of each composite to replay (a fixed budget, see
            :func:`~playitback.models.saliency.saliency_mask`); 0 replays the frames above the mean saliency (the
            original).
        replay_resolution: what the replayed frames show: "fine" (the next playback's frames, the method) or
            "coarse" (playback 0 interpolated onto the next playback's time grid, :func:`~playitback.models.replay.
            coarse_playback`: the same spans, stretched the same way, without the finer hop; a control).
    """

    def __init__(self, encoder: Encoder, saliency: Sequence[Saliency], decoder: TemPr,
                 freeze_encoder: bool = True, hops: Sequence[int] | None = None,
                 replay_source: str = "saliency", budget: float = 0.0, replay_resolution: str = "fine") -> None:
        super().__init__()
        if len(saliency) < 2:
            raise ValueError(f"PlayItBack needs at least 2 playbacks (one saliency module each), got {len(saliency)}; "
                             "use EncoderClassifier for the encoder alone")
        if replay_source not in REPLAY_SOURCES:
            raise ValueError(f"replay_source must be one of {REPLAY_SOURCES}, got {replay_source!r}")
        if replay_resolution not in REPLAY_RESOLUTIONS:
            raise ValueError(f"replay_resolution must be one of {REPLAY_RESOLUTIONS}, got {replay_resolution!r}")
        hops = list(hops) if hops is not None else nominal_hops(len(saliency))
        if len(hops) != len(saliency) or any(not isinstance(h, int) or h < 1 for h in hops):
            raise ValueError(f"hops must be {len(saliency)} positive ints (one per playback), got {hops}")
        self.encoder = encoder
        # The original's module name, so that its checkpoints load.
        self.saliencies = nn.ModuleList(saliency)
        self.decoder = decoder
        self.freeze_encoder = freeze_encoder
        self.hops = hops
        self.replay_source = replay_source
        self.budget = budget
        self.replay_resolution = replay_resolution
        kinds = {type(module) for module in saliency}
        if len(kinds) > 1:
            raise ValueError(f"PlayItBack: every playback's saliency must be of one class, got "
                             f"{sorted(kind.__name__ for kind in kinds)}")
        self.saliency_type: type[Saliency] = type(saliency[0])
        if freeze_encoder:
            encoder.requires_grad_(False)
        elif not self.saliency_type.reads_encoder_head:
            # An objective that does not read the encoder's head: keep the head fixed rather than unused (DDP needs
            # every trainable parameter to get a gradient).
            encoder.head.requires_grad_(False)

    @property
    def num_playbacks(self) -> int:
        return len(self.saliencies)

    def train(self, mode: bool = True) -> PlayItBack:
        super().train(mode)
        if self.freeze_encoder:
            # No drop path or dropout on frozen features (the original left them on).
            self.encoder.eval()
        return self

    def _replay_mask(self, saliency: Tensor, times: Tensor, replay_masks: Tensor | None) -> Tensor:
        """The frames of the composite to replay, bool [B, T0], as `replay_source` says."""
        if self.replay_source == "events":
            return mask_from_frame_times(replay_masks, times, self.hops[0])
        salient = saliency_mask(saliency, self.budget)
        if self.replay_source == "random":
            return random_span_mask(salient.sum(dim=1), salient.shape[1])
        if self.replay_source == "none":
            return torch.zeros_like(salient)
        return salient

    def _check_inputs(self, playbacks: Sequence[Tensor], replay_masks: Tensor | None) -> None:
        if len(playbacks) != self.num_playbacks:
            raise ValueError(f"expected {self.num_playbacks} playbacks, got {len(playbacks)}")
        if (replay_masks is not None) != (self.replay_source == "events"):
            raise ValueError("replay_masks must be given exactly when replay_source is 'events' (it is "
                             f"{self.replay_source!r})")

    def _encode(self, composite: Tensor) -> Tensor:
        """The encoder's tokens of a composite [B, T0, F] on their grid [B, T'', F'', D]."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_encoder):
            return _tokens_on_grid(self.encoder, composite)

    def _score(self, playback: int, composite: Tensor, grid_tokens: Tensor) -> tuple[Tensor, tuple[Tensor, ...]]:
        """Playback ``playback``'s saliency [B, T0] and its objective's inputs."""
        view = PlaybackView(composite, grid_tokens, self.encoder.token_rows, self.encoder.forward_head, self.budget)
        return self.saliencies[playback].score(view)

    def _replay_next(self, playback: int, playbacks: Sequence[Tensor], composite: Tensor, times: Tensor,
                     saliency: Tensor, replay_masks: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        """The composite of playback ``playback + 1`` and its frames' source times (both [B, T0, ...] as
        :func:`~playitback.models.replay.replay` returns them), and the replayed frames, bool [B, T0]."""
        mask = self._replay_mask(saliency, times, replay_masks)
        finer = playbacks[playback + 1]
        if self.replay_resolution == "coarse":
            finer = coarse_playback(playbacks[0], self.hops[0], self.hops[playback + 1], finer.shape[1])
        composite, times = replay(composite, times, finer, self.hops[playback + 1], mask)
        return composite, times, mask

    def forward(self, playbacks: Sequence[Tensor], replay_masks: Tensor | None = None) -> ModelOutput:
        """Run every playback.

        Args:
            playbacks: S tensors [B, T0 * (i + 1), F].
            replay_masks: with ``replay_source == "events"`` (only then), bool [B, T0] over the frames of playback
                0: at every playback the composite frames whose source time lies in these frames are replayed.

        Returns:
            Every field of :class:`ModelOutput`: the fused logits [B, K] and features [B, latent_dim], the logits of
            each playback, the saliency objective's inputs (the fields the saliency class declares: pos_logits and
            neg_logits of the slots, evidence_probs of the frame evidence), the saliency, the replay masks, the
            composites and the source time of every composite frame in frames of playback 0 (frame k of playback j
            is centred at ``k * hops[j] / hops[0]``).
        """
        self._check_inputs(playbacks, replay_masks)
        composite = playbacks[0]
        batch, frames0 = composite.shape[:2]
        times = frame_centres(batch, frames0, self.hops[0], composite.device)
        fields = self.saliency_type.objective_fields
        tokens, saliencies, masks = [], [], []
        objective: list[list[Tensor]] = [[] for _ in fields]
        composites, all_times = [composite], [times]
        for i in range(self.num_playbacks):
            grid_tokens = self._encode(composite)
            saliency, inputs = self._score(i, composite, grid_tokens)
            for collected, value in zip(objective, inputs, strict=True):
                collected.append(value)
            tokens.append(grid_tokens)
            saliencies.append(saliency)
            if i + 1 < self.num_playbacks:
                composite, times, mask = self._replay_next(i, playbacks, composite, times, saliency, replay_masks)
                masks.append(mask)
                composites.append(composite)
                all_times.append(times)
        decoded = self.decoder(tokens)
        return ModelOutput(
            logits=decoded.logits,
            features=decoded.features,
            playback_logits=decoded.playback_logits,
            **{name: torch.stack(values) for name, values in zip(fields, objective)},
            saliency=torch.stack(saliencies, dim=1),
            replay_masks=torch.stack(masks, dim=1),
            composites=torch.stack(composites, dim=1),
            frame_times=torch.stack(all_times, dim=1).to(torch.float32) / self.hops[0],
        )

    @torch.no_grad()
    def forward_anytime(self, playbacks: Sequence[Tensor], confidence: Callable[[Tensor], Tensor], threshold: float,
                        replay_masks: Tensor | None = None) -> AnytimeOutput:
        """Anytime inference: each clip stops after the first playback p < S - 1 whose prediction is confident,
        ``confidence(playback_logits[p]) >= threshold``; only the clips still running pay the saliency and replay of
        playback p and the encoder pass and decoder layer of playback p + 1. A clip's prediction is the one
        :meth:`forward` gives as ``playback_logits[p]`` (the fused logits for a clip that runs to the end), since
        decoder layer p reads playbacks 0..p only. Unlike :meth:`forward` it is data-dependent: choosing the running
        clips synchronises with the host once per playback, so it is for inference, not for compiled training.

        Args:
            playbacks: S tensors [B, T0 * (i + 1), F], as for :meth:`forward`.
            confidence: logits [b, K] -> confidence [b] (``playitback.anytime.exit_confidence`` with a policy).
            threshold: stop at this confidence (``math.inf``: every clip runs every playback).
            replay_masks: as for :meth:`forward` (``replay_source == "events"`` only).

        Returns:
            An :class:`~playitback.models.output.AnytimeOutput`.
        """
        self._check_inputs(playbacks, replay_masks)
        composite = playbacks[0]
        batch, frames0 = composite.shape[:2]
        device = composite.device
        times = frame_centres(batch, frames0, self.hops[0], device)
        running = torch.arange(batch, device=device)
        state = self.decoder.initial_state(batch)
        states: list[Tensor] = []
        logits: Tensor | None = None
        features: Tensor | None = None
        exits = torch.full((batch,), self.num_playbacks - 1, dtype=torch.long, device=device)
        for i in range(self.num_playbacks):
            grid_tokens = self._encode(composite)
            state = self.decoder.read(state, grid_tokens, i)
            states.append(state)
            if i + 1 == self.num_playbacks:
                break
            early_logits, early_features = self.decoder.state_logits(state)
            if logits is None:
                logits = early_logits.new_zeros(batch, early_logits.shape[-1])
                features = early_features.new_zeros(batch, early_features.shape[-1])
            stop = confidence(early_logits) >= threshold
            logits[running[stop]], features[running[stop]] = early_logits[stop], early_features[stop]
            exits[running[stop]] = i
            keep = ~stop
            if not bool(keep.any()):
                return AnytimeOutput(logits=logits, features=features, exits=exits)
            running, state = running[keep], state[keep]
            states = [s[keep] for s in states]
            composite, times, grid_tokens = composite[keep], times[keep], grid_tokens[keep]
            playbacks = [p[keep] for p in playbacks]
            if replay_masks is not None:
                replay_masks = replay_masks[keep]
            saliency, _ = self._score(i, composite, grid_tokens)
            composite, times, _ = self._replay_next(i, playbacks, composite, times, saliency, replay_masks)
        decoded = self.decoder.fuse(states)
        if logits is None:
            logits = decoded.logits.new_zeros(batch, decoded.logits.shape[-1])
            features = decoded.features.new_zeros(batch, decoded.features.shape[-1])
        logits[running], features[running] = decoded.logits, decoded.features
        return AnytimeOutput(logits=logits, features=features, exits=exits)
