#!/usr/bin/env bash
# Run generate.py --prompt_file over several prompt files and modes, one resumable folder each.
# Re-running the same command resumes: finished videos are verified and skipped (see docs/BATCH.md).
set -euo pipefail

usage() {
  cat <<'EOF'
usage: scripts/batch_generate.sh [--gpus N] [--modes MODE,...] [--out DIR] [--dry_run] PROMPT_FILE... [-- FLAGS...]

For each prompt file and mode, runs generate.py --prompt_file FILE --save_dir DIR/<file name>/<mode>
plus the mode's flags and FLAGS (any generate.py flag, e.g. --task t2v-A14B --ckpt_dir CKPT).
FLAGS may not set what keeps the runs apart (--prompt_file, --save_dir, --save_file, --prompt, the
modes' flags) nor what a batch cannot do (--ulysses_size, --dit_fsdp, --t5_fsdp): use the options above.

  --gpus N     N > 1: torchrun --nproc_per_node N, each GPU takes every N-th item (default 1)
  --modes      comma-separated, from: baseline, half, half_cfg (default: baseline)
                 baseline  the released sampler
                 half      --enable_half_frame_generation
                 half_cfg  half + --cfg_truncate_steps 5 --cfg_truncate_high_noise_steps 3
  --out DIR    root of the output folders (default: outputs)
  --dry_run    print the commands instead of running them

Exit code: 0 if every item of every run is complete; else the sum of the runs' exit codes
(generate.py: number of items not complete, 2 also for bad input), capped at 125.
EOF
}

mode_flags() {
  case "$1" in
    baseline) ;;
    half) echo "--enable_half_frame_generation" ;;
    half_cfg) echo "--enable_half_frame_generation --cfg_truncate_steps 5 --cfg_truncate_high_noise_steps 3" ;;
    *) echo "error: unknown mode '$1' (baseline, half, half_cfg)" >&2; return 2 ;;
  esac
}

gpus=1
modes=baseline
out=outputs
dry_run=
prompt_files=()
extra=()
while (($#)); do
  case "$1" in
    --gpus) gpus=${2:?--gpus needs a number}; shift 2 ;;
    --modes) modes=${2:?--modes needs a list}; shift 2 ;;
    --out) out=${2:?--out needs a folder}; shift 2 ;;
    --dry_run) dry_run=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; extra=("$@"); break ;;
    -*) echo "error: unknown option $1" >&2; usage >&2; exit 2 ;;
    *) prompt_files+=("$1"); shift ;;
  esac
done
if ((${#prompt_files[@]} == 0)); then
  echo "error: no prompt file given" >&2; usage >&2; exit 2
fi
if ! [[ $gpus =~ ^[1-9][0-9]*$ ]]; then
  echo "error: --gpus must be a positive number, got '$gpus'" >&2; exit 2
fi
for flag in ${extra[@]+"${extra[@]}"}; do
  case "${flag%%=*}" in
    --prompt_file|--save_dir|--save_file|--prompt)
      echo "error: $flag cannot be passed through: each prompt file and mode gets its own --save_dir (use --out)" >&2
      exit 2 ;;
    --enable_half_frame_generation|--cfg_truncate_steps|--cfg_truncate_high_noise_steps)
      echo "error: $flag cannot be passed through: --modes sets it, so modes would share outputs" >&2; exit 2 ;;
    --ulysses_size|--dit_fsdp|--t5_fsdp)
      echo "error: $flag shards one video; a batch gives each GPU whole items (use --gpus)" >&2; exit 2 ;;
  esac
done
IFS=, read -r -a mode_list <<<"$modes"
for mode in "${mode_list[@]}"; do mode_flags "$mode" >/dev/null || exit 2; done
declare -A seen=()
for file in "${prompt_files[@]}"; do
  [[ -f $file ]] || { echo "error: prompt file $file does not exist" >&2; exit 2; }
  name=$(basename "${file%.*}")
  [[ -z ${seen[$name]:-} ]] || { echo "error: $file and ${seen[$name]} would share $out/$name; rename one" >&2; exit 2; }
  seen[$name]=$file
done

generate="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/generate.py"
if ((gpus > 1)); then
  launcher=(torchrun --standalone --nproc_per_node "$gpus" "$generate")
else
  launcher=("${PYTHON:-python}" "$generate")
fi

total=0
for file in "${prompt_files[@]}"; do
  name=$(basename "${file%.*}")
  for mode in "${mode_list[@]}"; do
    read -r -a flags <<<"$(mode_flags "$mode")"
    cmd=("${launcher[@]}" --prompt_file "$file" --save_dir "$out/$name/$mode" ${flags[@]+"${flags[@]}"} ${extra[@]+"${extra[@]}"})
    if [[ -n $dry_run ]]; then
      printf '%q ' "${cmd[@]}"; echo
      continue
    fi
    echo "== $file, mode $mode -> $out/$name/$mode" >&2
    rc=0
    "${cmd[@]}" || rc=$?
    ((rc == 0)) || echo "== $file, mode $mode: exit code $rc (see $out/$name/$mode/manifest.jsonl)" >&2
    total=$((total + rc))
  done
done
exit $((total > 125 ? 125 : total))
