#!/usr/bin/env python3
"""Writes a Kubernetes JobSet that trains with one clipjax process per pod (GKE TPU or GPU).

    python launch/k8s_jobset.py --name b16 --image REGISTRY/clipjax:TAG --bucket my-bucket \\
        --tpu v5litepod-16 -- --config configs/clip/vit_b16.py > b16.json
    kubectl apply -f b16.json          # or --apply; JSON is valid YAML, kubectl takes either

One indexed Job of N pods. Each pod gets the process group explicitly:
`JAX_COORDINATOR_ADDRESS` is pod 0's stable DNS name under the JobSet's headless
service (`NAME-workers-0-0.NAME`), `JAX_NUM_PROCESSES` is N, and `JAX_PROCESS_ID` is
the pod's completion index. The workdir is the bucket, mounted in every pod by the
GKE Cloud Storage FUSE CSI driver. SIGTERM (node maintenance, preemption) gives clipjax
`--grace` seconds to save a checkpoint; the JobSet then restarts all pods
(`--max-restarts`) and they resume from it. Standard library only.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys

COORDINATOR_PORT = 8476
WORKDIR_MOUNT = "/workdir"
# GKE TPU node labels: accelerator name and the slice topology for each slice type.
TPU_SLICES = {
    "v5litepod-4": ("tpu-v5-lite-podslice", "2x2", 1, 4),
    "v5litepod-8": ("tpu-v5-lite-podslice", "2x4", 1, 8),
    "v5litepod-16": ("tpu-v5-lite-podslice", "4x4", 4, 4),
    "v5litepod-32": ("tpu-v5-lite-podslice", "4x8", 8, 4),
    "v5litepod-64": ("tpu-v5-lite-podslice", "8x8", 16, 4),
    "v5litepod-256": ("tpu-v5-lite-podslice", "16x16", 64, 4),
    "v4-16": ("tpu-v4-podslice", "2x2x2", 2, 4),
    "v4-32": ("tpu-v4-podslice", "2x2x4", 4, 4),
    "v4-64": ("tpu-v4-podslice", "2x4x4", 8, 4),
    "v6e-16": ("tpu-v6e-slice", "4x4", 4, 4),
    "v6e-64": ("tpu-v6e-slice", "8x8", 16, 4),
}


def _container(args: argparse.Namespace, pods: int) -> dict:
    index = "metadata.annotations['batch.kubernetes.io/job-completion-index']"
    env = [
        {
            "name": "JAX_COORDINATOR_ADDRESS",
            "value": f"{args.name}-workers-0-0.{args.name}:{COORDINATOR_PORT}",
        },
        {"name": "JAX_NUM_PROCESSES", "value": str(pods)},
        {"name": "JAX_PROCESS_ID", "valueFrom": {"fieldRef": {"fieldPath": index}}},
    ]
    if args.tpu:
        resources = {"google.com/tpu": str(TPU_SLICES[args.tpu][3])}
    else:
        resources = {"nvidia.com/gpu": str(args.gpus_per_pod)}
    command = ["clipjax", "train", f"--workdir={WORKDIR_MOUNT}/{args.run}", *args.clipjax_args]
    return {
        "name": "clipjax",
        "image": args.image,
        "command": command,
        "env": env,
        "ports": [{"containerPort": COORDINATOR_PORT, "name": "coordinator"}],
        "resources": {"limits": resources},
        "volumeMounts": [{"name": "workdir", "mountPath": WORKDIR_MOUNT}],
    }


def manifest(args: argparse.Namespace) -> dict:
    """The JobSet for `args`."""
    if args.tpu:
        accelerator, topology, pods, _ = TPU_SLICES[args.tpu]
        selector = {
            "cloud.google.com/gke-tpu-accelerator": accelerator,
            "cloud.google.com/gke-tpu-topology": topology,
        }
    else:
        pods = args.nodes
        selector = {"cloud.google.com/gke-accelerator": args.gpu_type}
    pod_spec = {
        "restartPolicy": "Never",
        "subdomain": args.name,
        "nodeSelector": selector,
        "terminationGracePeriodSeconds": args.grace,
        "containers": [_container(args, pods)],
        "volumes": [
            {
                "name": "workdir",
                "csi": {
                    "driver": "gcsfuse.csi.storage.gke.io",
                    "volumeAttributes": {
                        "bucketName": args.bucket,
                        # Orbax commits a checkpoint by renaming its temporary directory
                        "mountOptions": "implicit-dirs,rename-dir-limit=200000",
                    },
                },
            }
        ],
    }
    job = {
        "parallelism": pods,
        "completions": pods,
        "completionMode": "Indexed",
        "backoffLimit": 0,  # one failed pod fails the Job; the JobSet restarts all of them
        "template": {
            "metadata": {"annotations": {"gke-gcsfuse/volumes": "true"}},
            "spec": pod_spec,
        },
    }
    metadata = {"name": args.name}
    if args.tpu:  # one slice per JobSet: its pods land on one node pool
        metadata["annotations"] = {
            "alpha.jobset.sigs.k8s.io/exclusive-topology": "cloud.google.com/gke-nodepool"
        }
    return {
        "apiVersion": "jobset.x-k8s.io/v1alpha2",
        "kind": "JobSet",
        "metadata": metadata,
        "spec": {
            "failurePolicy": {"maxRestarts": args.max_restarts},
            "network": {"enableDNSHostnames": True, "subdomain": args.name},
            "replicatedJobs": [{"name": "workers", "replicas": 1, "template": {"spec": job}}],
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--name", required=True, help="JobSet name (DNS label)")
    parser.add_argument("--image", required=True, help="container image with clipjax installed")
    parser.add_argument("--bucket", required=True, help="GCS bucket (no gs://) for the workdir")
    parser.add_argument("--run", default=None, help="workdir inside the bucket (default: --name)")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--tpu", choices=sorted(TPU_SLICES), help="TPU slice type")
    target.add_argument("--nodes", type=int, help="GPU nodes (one pod each)")
    parser.add_argument("--gpus-per-pod", type=int, default=8)
    parser.add_argument("--gpu-type", default="nvidia-h100-80gb")
    parser.add_argument("--grace", type=int, default=300, help="seconds from SIGTERM to kill")
    parser.add_argument("--max-restarts", type=int, default=10)
    parser.add_argument("--out", default="-", help="file to write (default: stdout)")
    parser.add_argument(
        "--apply", action="store_true", help="also `kubectl apply` it (default: only print)"
    )
    parser.add_argument("clipjax_args", nargs=argparse.REMAINDER, help="-- then train's args")
    args = parser.parse_args(argv)
    if args.clipjax_args[:1] == ["--"]:
        args.clipjax_args = args.clipjax_args[1:]
    args.bucket = args.bucket.removeprefix("gs://").rstrip("/")
    args.run = args.run or args.name
    if not re.fullmatch(r"[a-z]([a-z0-9\-]{0,38}[a-z0-9])?", args.name):
        parser.error(f"--name={args.name!r} must be a DNS label of at most 40 characters")
    if args.nodes is not None and args.nodes < 1:
        parser.error(f"--nodes={args.nodes} must be at least 1")
    text = json.dumps(manifest(args), indent=2) + "\n"
    if args.out == "-":
        sys.stdout.write(text)
    else:
        with open(args.out, "w") as out:
            out.write(text)
    if args.apply:
        return subprocess.run(["kubectl", "apply", "-f", "-"], input=text, text=True).returncode
    return 0


if __name__ == "__main__":
    sys.exit(main())
