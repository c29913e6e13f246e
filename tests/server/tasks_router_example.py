"""A task router as server/routes/tasks.py provides one: app.py must mount it behind the API key."""
from fastapi import APIRouter

router = APIRouter(prefix="/v1")


@router.post("/example-task")
async def example_task() -> dict:
    return {"ok": True}
