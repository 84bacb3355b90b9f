"""Where MLflow runs go: one object owns the tracking URI and the experiment, and is passed explicitly (to Ray
workers too: it is plain data). The only place in the packages that points MLflow at a store."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

STORE = "mlflow.db"


def default_uri(folder: Path | str) -> str:
    """A SQLite store in ``folder`` (absolute, so every process and worker finds the same file)."""
    return f"sqlite:///{Path(folder).resolve() / STORE}"


def ensure_experiment(tracking_uri: str, name: str) -> str:
    """The experiment's id, creating it with its artifacts beside a SQLite store (``<store dir>/mlartifacts``)
    rather than in ``./mlruns`` of whatever folder the job was started from."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = None
    if tracking_uri.startswith("sqlite:///"):
        location = (Path(tracking_uri.removeprefix("sqlite:///")).parent / "mlartifacts").resolve().as_uri()
    return client.create_experiment(name, artifact_location=location)


@dataclass(frozen=True)
class Tracking:
    uri: str
    experiment: str

    @classmethod
    def in_folder(cls, folder: Path | str, experiment: str, uri: str = "") -> Tracking:
        """``uri`` when given, else the default store in ``folder``."""
        return cls(uri or default_uri(folder), experiment)

    def activate(self) -> str:
        """Point this process's MLflow at the store and the experiment (created if new); returns its id."""
        import mlflow

        mlflow.set_tracking_uri(self.uri)
        experiment_id = ensure_experiment(self.uri, self.experiment)
        mlflow.set_experiment(experiment_id=experiment_id)
        return experiment_id
