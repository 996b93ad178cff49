// What the gateway's codes mean, in plain words for people.

export const STATUS_LABEL = {
  queued: 'Queued', running: 'Running', succeeded: 'Succeeded', failed: 'Failed', cancelled: 'Cancelled',
  expired: 'Expired',
};

// Job error codes (set by nodes and the fallback router).
const JOB_ERRORS = {
  DECODE_FAILED: 'This file could not be read: it is damaged, cut short, or not what its name says.',
  NO_AUDIO_TRACK: 'This file has no sound to transcribe: it has no audio track.',
  INPUT_CORRUPT: 'The file was damaged on its way to the worker. Upload it again.',
  INPUT_MISSING: 'The uploaded file is no longer stored (it expired). Upload it again.',
  NO_NODE_COMPLETED: 'No worker finished this job: the worker that took it stopped or lost it. Retry to run it again.',
  EXPIRED: 'This job did not finish within the time to live it was given (options.ttl_s). Retry to run it again.',
  NO_GPU_NODE: 'This job asked for a GPU only, and no GPU worker started it in time. Start a GPU node and retry, or submit it without requiring a GPU.',
  NODE_SHUTDOWN: 'The worker stopped before it finished. Retry to run it again.',
  PROCESSOR_ERROR: 'The worker hit an unexpected error while processing this file.',
  UNSUPPORTED_KIND: 'No worker here can process this kind of job.',
  UNSUPPORTED_LANGUAGE: 'The model on the worker understands English only. Choose English or Detect as the language.',
  MODEL_NOT_SERVED: 'The worker does not have the model this job asked for.',
  GPU_OUT_OF_MEMORY: 'The GPU ran out of memory on this file.',
  DOWNLOAD_TIMEOUT: 'Downloading the media from the URL took too long.',
  DOWNLOAD_CRASHED: 'The download of the media stopped unexpectedly.',
  DOWNLOAD_FAILED: 'The media could not be downloaded from that URL.',
  DOWNLOAD_TOO_LARGE: 'The media at that URL is larger than the allowed size.',
  DOWNLOAD_UNAVAILABLE: 'The site with the media could not be reached.',
  URL_REFUSED: 'That address is not allowed: private and local network addresses are blocked.',
  DOCUMENT_ENCRYPTED: 'This document is protected by a password. Remove the password and upload it again.',
  ARCHIVE_TOO_LARGE: 'This Office file unpacks to far more data than it should (a "zip bomb"), so it was refused.',
  IMAGE_TOO_LARGE: 'This image has more pixels than the workers accept.',
  DOCUMENT_TOO_LARGE: 'This document has more pages than the workers convert in one job.',
  UNSUPPORTED_DOCUMENT: 'This document format is not one the workers convert.',
};

// Request errors, by the code of the gateway's JSON error body.
const REQUEST_ERRORS = {
  UNSUPPORTED_MEDIA: 'This file type is not supported. Upload audio, video, a document or an image.',
  KIND_NOT_SERVED: 'No worker online can process this kind of file. Start a node, or try again later.',
  PAYLOAD_TOO_LARGE: 'The file is larger than the upload limit of this gateway.',
  RATE_LIMITED: 'Too many jobs are in flight. Wait a moment and try again.',
  UNAVAILABLE: 'The job bus is restarting. Nothing was accepted; try again in a few seconds.',
};

// Why a job that could have used a GPU went to a CPU lane (routed_reason).
export const ROUTE_NOTES = {
  no_live_gpu_node: 'no GPU node of yours was online',
  gpu_backlog_full: 'the GPU queue was full',
  gpu_mode_off: 'GPU use is switched off on this gateway',
  kind_not_gpu_beneficial: 'this kind of job does not use a GPU',
  no_gpu_document_engine: 'documents run on CPU unless your GPU node has a document layout engine',
  kind_not_served_on_gpu: 'your GPU node does not serve this kind of job',
};

// Why a GPU job was moved to the CPU lane (fallback.reason).
export const FALLBACK_REASONS = {
  ack_timeout: 'the GPU node did not finish it in time',
  node_released: 'the GPU node handed it back',
};

export const UNREACHABLE = 'The gateway could not be reached. Check your connection and try again.';
export const KEY_REFUSED = 'Your API key is no longer accepted (revoked or expired). Sign in again.';

export function jobErrorText(error) {
  return JOB_ERRORS[error.code] || 'The job failed.';
}

/** An ApiError (or a network failure) as one sentence. */
export function requestErrorText(err) {
  if (!err || err.status === undefined) return UNREACHABLE;
  if (err.code === 'INVALID_INPUT') return `The request was refused: ${err.message}`;
  return REQUEST_ERRORS[err.code] || err.message;
}
