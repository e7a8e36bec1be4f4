"""Losses of the running round as a vtkMRMLTableNode plotted in a vtkMRMLPlotChartNode.

The nodes are made once and reused by every round; ``update_nodes`` reports whether it had to
make the chart (True only then), and the widget shows the chart in the layout only in that case
or when the user asks: the user's layout is not switched at every round.
"""

from __future__ import annotations

from typing import Any


def _field(obj: Any, name: str, default: Any = None) -> Any:
    value = getattr(obj, name, None)
    return default if value is None else value


class LearningCurve:
    TABLE_NAME = "ReciprocalSeg losses"
    CHART_NAME = "ReciprocalSeg learning curve"

    def __init__(self, scene: Any) -> None:
        self.scene = scene
        self._table: Any = None
        self._chart: Any = None
        self._series: dict = {}
        self.reset()

    @property
    def chart(self) -> Any:
        return self._chart

    def reset(self) -> None:
        """A new round: forget the samples, keep the nodes."""
        self.steps: list = []
        self.losses: dict = {}
        self._phase_key: tuple | None = None
        self._offset = 0

    def add(self, status: Any) -> bool:
        """Record one status sample; True if it added a point.

        The x axis is the round's overall iteration when the service reports it; otherwise a
        new phase continues after the previous phase's last point.
        """
        losses = {
            k: float(v)
            for k, v in (_field(status, "losses", {}) or {}).items()
            if isinstance(v, (int, float))
        }
        iteration = _field(status, "iteration")
        if iteration is None or not losses:
            return False
        step = _field(status, "overall_iteration")
        if step is None:
            key = (_field(status, "run_id"), _field(status, "phase"))
            if key != self._phase_key:
                if self._phase_key is not None and self.steps:
                    self._offset = self.steps[-1]
                self._phase_key = key
            step = self._offset + int(iteration)
        step = int(step)
        if self.steps and step <= self.steps[-1]:
            return False
        self.steps.append(step)
        for name in set(self.losses) | set(losses):
            values = self.losses.setdefault(name, [float("nan")] * (len(self.steps) - 1))
            values.append(losses.get(name, float("nan")))
        return True

    def _alive(self, node: Any) -> bool:
        return node is not None and self.scene.GetNodeByID(node.GetID()) is node

    def _nodes(self) -> bool:
        """Make the table/chart when missing (first use, or deleted by the user); True if the chart is new."""
        if not self._alive(self._table):
            self._table = self.scene.AddNewNodeByClass("vtkMRMLTableNode", self.TABLE_NAME)
            self._series = {}
        new_chart = not self._alive(self._chart)
        if new_chart:
            self._chart = self.scene.AddNewNodeByClass("vtkMRMLPlotChartNode", self.CHART_NAME)
            self._chart.SetTitle("ReciprocalSeg training losses")
            self._chart.SetXAxisTitle("iteration")
            self._chart.SetYAxisTitle("loss")
            self._series = {}
        return new_chart

    def update_nodes(self) -> bool:
        """Write the samples into the table and one plot series per loss; True if the chart is new."""
        import numpy as np
        import slicer
        from slicer.util import updateTableFromArray

        if not self.steps:
            return False
        new_chart = self._nodes()
        names = sorted(self.losses)
        columns = [np.asarray(self.steps, dtype=float)] + [
            np.asarray(self.losses[n], dtype=float) for n in names
        ]
        updateTableFromArray(self._table, columns, ["iteration"] + names)
        for name in names:
            if name in self._series and self._alive(self._series[name]):
                continue
            series = self.scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", f"loss {name}")
            series.SetAndObserveTableNodeID(self._table.GetID())
            series.SetXColumnName("iteration")
            series.SetYColumnName(name)
            series.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter)
            series.SetMarkerStyle(slicer.vtkMRMLPlotSeriesNode.MarkerStyleNone)
            series.SetUniqueColor()
            self._chart.AddAndObservePlotSeriesNodeID(series.GetID())
            self._series[name] = series
        return new_chart
