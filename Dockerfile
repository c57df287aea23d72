# One image for both functions; FUNCTION_TARGET chooses which one a container
# serves: token or metadata. Build and deploy steps are in docs/deployment.md.
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PORT=8080

WORKDIR /app

COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt

COPY main.py ./
COPY functions/ functions/
COPY shared/ shared/

# Run as an unprivileged user without a home directory or login shell.
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin app
USER 10001

EXPOSE 8080

# The shell form expands the variables at start-up; exec lets functions-framework
# receive SIGTERM directly from Cloud Run.
CMD ["sh", "-c", "exec functions-framework --target=\"${FUNCTION_TARGET:?set FUNCTION_TARGET to token or metadata}\" --port=\"$PORT\""]
