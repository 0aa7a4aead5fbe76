"""50 submissions from 10 concurrent clients: every one is answered, runs once and completes; none lost."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
from service_helpers import PROMPT, LiveServer, videos_in, wait_for

CLIENTS, PER_CLIENT = 10, 5


def test_fifty_jobs_from_ten_clients(tmp_path):
    live = LiveServer(["--save_dir", str(tmp_path), "--frame_num", "1", "--sample_steps", "1"])
    try:

        def client_submits(client_index: int) -> list[str]:
            with httpx.Client(base_url=live.url, timeout=60) as client:
                ids = []
                for i in range(PER_CLIENT):
                    answer = client.post("/v1/videos", json={"prompt": f"{PROMPT} {client_index}.{i}"})
                    assert answer.status_code == 202, answer.text
                    ids.append(answer.json()["id"])
                return ids

        with ThreadPoolExecutor(CLIENTS) as pool:
            ids = [job_id for batch in pool.map(client_submits, range(CLIENTS)) for job_id in batch]
        assert len(set(ids)) == CLIENTS * PER_CLIENT

        answers = wait_for(live.client, ids)
        assert {answer["status"] for answer in answers.values()} == {"completed"}
        assert {answer["attempts"] for answer in answers.values()} == {1}
        prompts = {answer["prompt"] for answer in answers.values()}
        assert prompts == {f"{PROMPT} {c}.{i}" for c in range(CLIENTS) for i in range(PER_CLIENT)}

        listed = live.client.get("/v1/videos", params={"limit": 100}).json()["data"]
        assert sorted(job["id"] for job in listed) == sorted(ids)
        events = live.service.store.events()
        assert sorted(j for j, e in events if e == "completed") == sorted(ids)
        assert sorted(j for j, e in events if e == "started") == sorted(ids)
        assert [path.stem for path in videos_in(tmp_path)] == sorted(ids)
    finally:
        live.close()
