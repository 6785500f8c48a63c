// video2mp3 in the browser: sign in, drop videos, follow each upload and
// conversion, play or download the MP3s. Plain DOM; every text from a user or
// the server goes in through textContent, never innerHTML.
(() => {
  'use strict';

  // Legal values: domain/mp3_options.py.
  const BITRATES = [32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320];
  const DEFAULT_BITRATE = 192;
  // Loudness targets offered (LUFS, EBU R128); the server takes -70..-5.
  const LOUDNESS_TARGETS = [[-23, 'broadcast'], [-16, 'podcasts'], [-14, 'streaming']];
  const POLL_MS = 1000;
  // WatchJob (a streamed JSON array of Job updates) where the server has it.
  const watchUrl = (id) => `/v1/jobs/${encodeURIComponent(id)}:watch`;
  // Files this big go by tus (/v1/uploads, tus-js-client): resumable after a
  // network drop, in PATCHes of TUS_CHUNK_BYTES. Smaller ones in one POST.
  const TUS_MIN_BYTES = 8 * 1024 * 1024;
  const TUS_CHUNK_BYTES = 16 * 1024 * 1024;
  const TUS_RETRY_DELAYS = [0, 1000, 3000, 5000, 10000, 20000, 30000, 60000];
  const TOKEN_KEY = 'video2mp3.token';
  const EMAIL_KEY = 'video2mp3.email';
  const REFRESH_KEY = 'video2mp3.refresh';
  // Renew the access token this long before it expires (a quarter of its
  // lifetime if that is shorter); retry this often while the server is away.
  const RENEW_BEFORE_MS = 60 * 1000;
  const RENEW_RETRY_MS = 5 * 1000;

  const $ = (id) => document.getElementById(id);
  const ui = {
    notice: $('notice'), account: $('account'), accountEmail: $('account-email'), logout: $('logout'),
    authView: $('auth-view'), authForm: $('auth-form'), email: $('email'), password: $('password'),
    authError: $('auth-error'), login: $('login'), signup: $('signup'),
    appView: $('app-view'), bitrate: $('bitrate'), vbr: $('vbr'), mono: $('mono'),
    start: $('start'), end: $('end'), loudness: $('loudness'),
    coverArt: $('cover-art'), splitChapters: $('split-chapters'), downloadAll: $('download-all'),
    fileInput: $('file-input'), dropZone: $('drop-zone'),
    jobs: $('jobs'), jobsEmpty: $('jobs-empty'), more: $('more'), refresh: $('refresh'),
    usage: $('usage'),
  };

  // The tokens live in sessionStorage only (gone when the tab closes). The
  // access token is only ever sent in the Authorization header, never in a
  // URL; the refresh token only to POST /v1/sessions:refresh (which renews
  // both, before the access token expires or after a 401) and
  // POST /v1/sessions:revoke (logout).
  const session = {
    token: sessionStorage.getItem(TOKEN_KEY) || '',
    email: sessionStorage.getItem(EMAIL_KEY) || '',
    refreshToken: sessionStorage.getItem(REFRESH_KEY) || '',
  };
  let renewTimer = 0;
  let renewing = null; // the renewal in flight: every caller waits for the same one
  const rows = []; // every Row on screen, newest first
  let nextPageToken = '';
  let watchSupported = null; // unknown until the first watch request

  // ------------------------------------------------------------ helpers

  function h(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (k === 'text') node.textContent = v;
      else if (k === 'class') node.className = v;
      else if (v !== false && v != null) node.setAttribute(k, v === true ? '' : v);
    }
    for (const c of children) if (c) node.append(c);
    return node;
  }

  function formatBytes(n) {
    n = Number(n) || 0;
    const units = ['bytes', 'KB', 'MB', 'GB', 'TB'];
    let i = 0; // binary multiples, so a 2 GiB limit reads "2.0 GB"
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
    return i === 0 ? `${n} bytes` : `${n.toFixed(n < 10 ? 1 : 0)} ${units[i]}`;
  }

  function formatDate(text) {
    const d = new Date(text);
    if (!text || Number.isNaN(d.getTime())) return '';
    return d.toLocaleString(undefined, { dateStyle: 'medium', timeStyle: 'short' });
  }

  // holiday.mov -> holiday.mp3
  function mp3Name(filename) {
    const base = String(filename || '').replace(/^.*[\\/]/, '').replace(/\.[^.]*$/, '');
    return `${base || 'audio'}.mp3`;
  }

  function describeOptions(o) {
    if (!o) return '';
    const quality = o.vbr_quality != null && !o.bitrate_kbps ? `VBR V${o.vbr_quality}` : `${o.bitrate_kbps} kbps`;
    const parts = [`${quality} ${Number(o.channels) === 1 ? 'mono' : 'stereo'}`];
    if (Number(o.start_ms) || o.end_ms != null) {
      parts.push(`${formatTime(Number(o.start_ms) || 0)}–${o.end_ms != null ? formatTime(Number(o.end_ms)) : 'end'}`);
    }
    if (o.loudness_lufs != null) parts.push(`${Number(o.loudness_lufs)} LUFS`);
    if (o.cover_art && String(o.cover_art) !== 'false') parts.push('cover');
    if (o.split_chapters && String(o.split_chapters) !== 'false') parts.push('per chapter');
    return parts.join(' · ');
  }

  // Milliseconds as h:mm:ss.mmm (hours and milliseconds only when there are some).
  function formatTime(ms) {
    const h = Math.floor(ms / 3600000);
    const m = Math.floor(ms / 60000) % 60;
    const s = Math.floor(ms / 1000) % 60;
    const frac = ms % 1000 ? `.${String(ms % 1000).padStart(3, '0')}` : '';
    const ss = `${String(s).padStart(2, '0')}${frac}`;
    return h ? `${h}:${String(m).padStart(2, '0')}:${ss}` : `${m}:${ss}`;
  }

  // "1:30", "0:01:30.5" or "90.5" (seconds) as milliseconds; null when empty,
  // NaN when it is no time.
  function parseTime(text) {
    const t = text.trim();
    if (!t) return null;
    const m = /^(?:(\d+):)?(?:(\d+):)?(\d+(?:\.\d{1,3})?)$/.exec(t);
    if (!m) return NaN;
    const [hours, minutes] = m[2] != null ? [Number(m[1]), Number(m[2])] : [0, Number(m[1] || 0)];
    const seconds = Number(m[3]);
    if ((m[1] != null || m[2] != null) && seconds >= 60) return NaN;
    if (m[2] != null && minutes >= 60) return NaN;
    return (hours * 3600 + minutes * 60) * 1000 + Math.round(seconds * 1000);
  }

  // A Blob saved as a file (the click on a download link the page makes).
  function saveBlob(blob, name) {
    const url = URL.createObjectURL(blob);
    const a = h('a', { href: url, download: name });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60 * 1000);
  }

  const sleep = (ms, signal) => new Promise((resolve, reject) => {
    const t = setTimeout(resolve, ms);
    signal?.addEventListener('abort', () => { clearTimeout(t); reject(signal.reason); }, { once: true });
  });

  // ------------------------------------------------------------ errors

  // An HTTP failure with what google.rpc.Status says about it; status 0 means
  // the server could not be reached at all.
  class ApiError extends Error {
    constructor(status, body) {
      const details = Array.isArray(body?.details) ? body.details : [];
      const info = details.find((d) => String(d['@type']).endsWith('google.rpc.ErrorInfo')) || {};
      const retry = details.find((d) => String(d['@type']).endsWith('google.rpc.RetryInfo'));
      super(body?.message || '');
      this.status = status;
      this.reason = info.reason || '';
      this.metadata = info.metadata || {};
      this.retryDelay = retry?.retry_delay || '';
    }
  }

  function parseJson(text) {
    try { return JSON.parse(text); } catch { return null; }
  }

  // What a person can do about it, in words.
  function describeError(err) {
    if (!(err instanceof ApiError)) return 'Something went wrong. Please try again.';
    if (err.status === 0) return 'Cannot reach the server. Check your connection and try again.';
    // Limits per job (413) and quotas (429): the server's message says what is used, allowed and when it frees up.
    if (['AUDIO_TOO_LONG', 'MP3_TOO_LARGE', 'QUOTA_EXCEEDED'].includes(err.reason) && err.message) {
      return `${capitalise(err.message)}.`;
    }
    if (err.reason === 'UPLOAD_TOO_LARGE' || err.status === 413) {
      const limit = Number(err.metadata.limit_bytes) || Number((err.message.match(/(\d+)-byte/) || [])[1]);
      return limit ? `Too large: files can be at most ${formatBytes(limit)}.` : 'Too large for the server.';
    }
    if (err.reason === 'STORAGE_FULL' || err.status === 507) {
      return 'The server is out of storage space right now. Try again later.';
    }
    if (err.reason === 'TOO_MANY_UPLOADS' || err.status === 429) {
      return 'The server is busy with too many uploads at once. Retry in a few seconds.';
    }
    if (err.status === 502 || err.status === 503 || err.status === 504) {
      return err.message && err.reason
        ? `${capitalise(err.message)}.`
        : 'The service is unavailable right now. Try again in a moment.';
    }
    return err.message ? `${capitalise(err.message)}.` : `The server answered ${err.status}.`;
  }

  const capitalise = (s) => s.charAt(0).toUpperCase() + s.slice(1).replace(/\.$/, '');

  function showNotice(text, kind = 'error') {
    ui.notice.textContent = text;
    ui.notice.className = `banner banner-${kind}`;
    ui.notice.hidden = !text;
  }

  // ------------------------------------------------------------ the API

  async function api(method, path, { body, signal, raw = false, authed = true, renewed = false } = {}) {
    if (authed && !renewed) await renewIfDue();
    const headers = {};
    if (authed) headers.Authorization = `Bearer ${session.token}`;
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    let res;
    try {
      res = await fetch(path, {
        method, headers, signal, body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (e) {
      if (signal?.aborted) throw e;
      throw new ApiError(0, null);
    }
    if (!res.ok) {
      const err = new ApiError(res.status, parseJson(await res.text().catch(() => '')));
      if (authed && res.status === 401) {
        // Once: the token may have expired (a sleeping laptop) or been refused.
        const outcome = renewed ? 'ended' : await renewSession();
        if (outcome === 'ok') return api(method, path, { body, signal, raw, authed, renewed: true });
        if (outcome === 'unreachable') throw new ApiError(0, null);
        sessionExpired();
      }
      throw err;
    }
    if (raw) return res;
    return res.status === 204 ? {} : res.json();
  }

  const isFinal = (job) => job.state === 'JOB_STATE_DONE' || job.state === 'JOB_STATE_FAILED';

  // Follows a job until DONE or FAILED, calling onJob with each new state.
  // Streams through WatchJob when the server has it, else polls GetJob.
  async function followJob(id, onJob, signal) {
    if (watchSupported !== false && await watchJob(id, onJob, signal)) return;
    await pollJob(id, onJob, signal);
  }

  // True if the stream carried the job to a final state; false to fall back
  // to polling (no WatchJob on this server, or the stream ended early).
  async function watchJob(id, onJob, signal, renewed = false) {
    if (!renewed) await renewIfDue();
    let res;
    try {
      res = await fetch(watchUrl(id), { headers: { Authorization: `Bearer ${session.token}` }, signal });
    } catch (e) {
      if (signal.aborted) throw e;
      return false;
    }
    if (res.status === 401) {
      const outcome = renewed ? 'ended' : await renewSession();
      if (outcome === 'ok') return watchJob(id, onJob, signal, true);
      if (outcome === 'unreachable') return false; // polling will retry
      sessionExpired();
      throw new ApiError(401, null);
    }
    if (!res.ok || !res.body) {
      // Before WatchJob exists the path is unknown (404) or read as a bad job id (400).
      if ([400, 404, 405, 501].includes(res.status)) watchSupported = false;
      res.body?.cancel().catch(() => {});
      return false;
    }
    watchSupported = true;
    for await (const job of jsonObjects(res.body)) {
      onJob(job);
      if (isFinal(job)) return true;
    }
    return false;
  }

  // The top-level objects of a streamed JSON array ("[{..},\n{..}]") as they arrive.
  async function* jsonObjects(stream) {
    const reader = stream.pipeThrough(new TextDecoderStream()).getReader();
    let buf = '';
    let depth = 0; let inString = false; let escaped = false; let start = -1; let i = 0;
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buf += value;
      for (; i < buf.length; i += 1) {
        const c = buf[i];
        if (inString) {
          if (escaped) escaped = false;
          else if (c === '\\') escaped = true;
          else if (c === '"') inString = false;
        } else if (c === '"') inString = true;
        else if (c === '{') { if (depth++ === 0) start = i; }
        else if (c === '}' && --depth === 0) {
          const obj = parseJson(buf.slice(start, i + 1));
          const job = obj && (obj.result || obj); // tolerate {"result": Job} framing
          buf = buf.slice(i + 1); i = -1;
          if (job && job.job_id) yield job;
        }
      }
    }
  }

  async function pollJob(id, onJob, signal) {
    let failures = 0;
    for (;;) {
      try {
        const job = await api('GET', `/v1/jobs/${encodeURIComponent(id)}`, { signal });
        failures = 0;
        onJob(job);
        if (isFinal(job)) return;
      } catch (e) {
        if (signal.aborted || (e instanceof ApiError && e.status > 0 && e.status < 500)) throw e;
        failures += 1; // unreachable or 5xx: keep trying, a little slower
        onJob(null, e);
      }
      await sleep(POLL_MS * Math.min(1 + failures, 5), signal);
    }
  }

  // ------------------------------------------------------------ one row

  const STATE_LABEL = {
    JOB_STATE_QUEUED: 'Queued', JOB_STATE_PROCESSING: 'Converting', JOB_STATE_DONE: 'Done',
    JOB_STATE_FAILED: 'Failed', UPLOADING: 'Uploading', CANCELLED: 'Cancelled', ERROR: 'Not uploaded',
  };

  // One file: an upload in progress, or a job (fresh or from the list).
  class Row {
    constructor({ file = null, job = null }) {
      this.file = file;
      this.job = job;
      this.name = file ? file.name : job.filename;
      this.xhr = null;
      this.tus = null; // a resumable upload in progress (tus-js-client)
      this.follow = null; // AbortController of followJob
      this.mp3Url = '';

      this.badge = h('span', { class: 'badge' });
      this.nameEl = h('span', { class: 'job-name', text: this.name || '(no name)' });
      this.meta = h('p', { class: 'job-meta' });
      this.bar = h('progress', { class: 'bar', max: '100', 'aria-label': `Progress of ${this.name}` });
      this.status = h('p', { class: 'job-status', role: 'status', 'aria-live': 'polite' });
      this.player = h('div', { class: 'job-player' });
      this.actions = h('div', { class: 'job-actions' });
      this.el = h('li', { class: 'job' },
        h('div', { class: 'job-head' }, this.nameEl, this.badge),
        this.meta, this.bar, this.status, this.player, this.actions);
      if (job) this.showJob(job);
    }

    setBadge(state) {
      this.badge.textContent = STATE_LABEL[state] || state;
      this.badge.className = `badge badge-${state.replace('JOB_STATE_', '').toLowerCase()}`;
      this.el.dataset.state = state;
    }

    setActions(...buttons) {
      this.actions.replaceChildren(...buttons.filter(Boolean));
    }

    button(label, onClick, cls = 'btn btn-small') {
      const b = h('button', { type: 'button', class: cls, text: label, 'aria-label': `${label}: ${this.name}` });
      b.addEventListener('click', onClick);
      return b;
    }

    // -- upload

    upload(renewed = false) {
      if (window.tus && window.tus.isSupported && this.file.size >= TUS_MIN_BYTES) {
        this.uploadResumable();
        return;
      }
      const options = currentOptions();
      const params = new URLSearchParams({ filename: this.name, ...options });
      const xhr = new XMLHttpRequest();
      this.xhr = xhr;
      const started = performance.now();
      let lastText = 0;
      this.setBadge('UPLOADING');
      this.meta.textContent = `${formatBytes(this.file.size)} · ${describeOptions(wireOptions(options))}`;
      this.bar.value = 0;
      this.bar.hidden = false;
      this.status.textContent = 'Starting upload…';
      this.setActions(this.button('Cancel', () => xhr.abort()));

      xhr.upload.addEventListener('progress', (e) => {
        const total = e.lengthComputable ? e.total : this.file.size;
        const pct = total ? Math.floor((e.loaded / total) * 100) : 0;
        this.bar.value = pct;
        const now = performance.now();
        if (now - lastText < 400 && e.loaded < total) return; // readable, not a flood for screen readers
        lastText = now;
        const speed = e.loaded / Math.max((now - started) / 1000, 0.001);
        this.status.textContent = `Uploading ${formatBytes(e.loaded)} of ${formatBytes(total)} · ${pct}% · ${formatBytes(speed)}/s`;
      });
      xhr.addEventListener('load', () => {
        this.xhr = null;
        const body = parseJson(xhr.responseText);
        if (xhr.status >= 200 && xhr.status < 300 && body?.job_id) {
          this.showJob(body);
          this.startFollowing();
        } else {
          if (xhr.status === 401) {
            retryAfterRenewal(renewed, () => this.upload(true), () => this.uploadFailed(new ApiError(0, null)));
          } else this.uploadFailed(new ApiError(xhr.status, body));
        }
      });
      xhr.addEventListener('error', () => { this.xhr = null; this.uploadFailed(new ApiError(0, null)); });
      xhr.addEventListener('abort', () => {
        this.xhr = null;
        this.setBadge('CANCELLED');
        this.bar.hidden = true;
        this.status.textContent = 'Upload cancelled. Nothing was kept on the server.';
        this.setActions(this.button('Upload again', () => this.upload()), this.button('Remove', () => this.remove()));
      });

      xhr.open('POST', `/v1/videos?${params}`);
      xhr.setRequestHeader('Authorization', `Bearer ${session.token}`);
      xhr.setRequestHeader('Content-Type', this.file.type || 'application/octet-stream');
      xhr.send(this.file);
    }

    // Big files: tus (POST /v1/uploads, then PATCHes). A dropped connection is
    // retried with backoff and resumes where the server's HEAD says; offline,
    // it waits for the browser to be online again. The upload's id is its job's.
    uploadResumable() {
      const options = currentOptions();
      const started = performance.now();
      let lastText = 0;
      this.setBadge('UPLOADING');
      this.meta.textContent = `${formatBytes(this.file.size)} · ${describeOptions(wireOptions(options))} · resumable`;
      this.bar.value = 0;
      this.bar.hidden = false;
      this.status.textContent = 'Starting upload…';
      const row = this;
      const upload = new window.tus.Upload(this.file, {
        endpoint: '/v1/uploads',
        chunkSize: TUS_CHUNK_BYTES,
        retryDelays: TUS_RETRY_DELAYS,
        metadata: { filename: this.name, filetype: this.file.type || 'application/octet-stream',
          request_id: newRequestId(), ...options },
        // Resume after a reload too (tus-js-client keeps the upload's URL in localStorage).
        storeFingerprintForResuming: true,
        removeFingerprintOnSuccess: true,
        // The token current at each request, renewed first when due (an upload
        // may outlast it); after a 401, renewed once more before the retry.
        async onBeforeRequest(req) {
          if (row.renewBeforeRetry) {
            row.renewBeforeRetry = false;
            if (await renewSession() !== 'ok') { sessionExpired(); throw new ApiError(401, null); }
          } else {
            await renewIfDue();
          }
          req.setHeader('Authorization', `Bearer ${session.token}`);
        },
        onShouldRetry(err) {
          const status = err.originalResponse ? err.originalResponse.getStatus() : 0;
          if (status === 401) {  // once per upload: renew (in onBeforeRequest), then retry
            if (row.renewedForTus) return false;
            row.renewedForTus = row.renewBeforeRetry = true;
            return true;
          }
          if (status === 0) {
            row.status.textContent = navigator.onLine
              ? 'Connection lost. Resuming where the server got to…'
              : 'Offline. The upload resumes when you are back online…';
          }
          // 409 offset, 423 another PATCH, 429 busy, 5xx, 0 no answer: retry; other 4xx: no.
          return status === 0 || status === 409 || status === 423 || status === 429 || status >= 500;
        },
        onProgress(sent, total) {
          const pct = total ? Math.floor((sent / total) * 100) : 0;
          row.bar.value = pct;
          const now = performance.now();
          if (now - lastText < 400 && sent < total) return;
          lastText = now;
          const speed = sent / Math.max((now - started) / 1000, 0.001);
          row.status.textContent = `Uploading ${formatBytes(sent)} of ${formatBytes(total)} · ${pct}% · ${formatBytes(speed)}/s`;
        },
        onSuccess() {
          row.tus = null;
          const id = decodeURIComponent(String(upload.url).split('/').pop());
          api('GET', `/v1/jobs/${encodeURIComponent(id)}`).then((job) => {
            row.showJob(job);
            row.startFollowing();
          }).catch((e) => { if (!(e instanceof ApiError && e.status === 401)) row.uploadFailed(e); });
        },
        onError(err) {
          const status = err.originalResponse ? err.originalResponse.getStatus() : 0;
          if (status === 401) { row.tus = null; sessionExpired(); return; }
          if (status === 0 && !navigator.onLine) {
            // Offline: go on by itself once the browser is back online.
            row.status.textContent = 'Connection lost. The upload resumes when you are back online…';
            window.addEventListener('online', () => { if (row.tus === upload) upload.start(); }, { once: true });
            return;
          }
          row.tus = null;
          const body = err.originalResponse ? parseJson(err.originalResponse.getBody()) : null;
          row.uploadFailed(new ApiError(status, body));
        },
      });
      this.tus = upload;
      this.setActions(this.button('Cancel', () => this.cancelResumable()));
      upload.findPreviousUploads().then((previous) => {
        if (previous.length) upload.resumeFromPreviousUpload(previous[0]);
        if (this.tus === upload) upload.start();
      });
    }

    // Cancel: terminate the upload (DELETE), so nothing stays on the server.
    cancelResumable() {
      const upload = this.tus;
      this.tus = null;
      upload?.abort(true).catch(() => {});
      this.setBadge('CANCELLED');
      this.bar.hidden = true;
      this.status.textContent = 'Upload cancelled. Nothing was kept on the server.';
      this.setActions(this.button('Upload again', () => this.upload()), this.button('Remove', () => this.remove()));
    }

    uploadFailed(err) {
      this.setBadge('ERROR');
      this.bar.hidden = true;
      this.status.textContent = describeError(err);
      this.status.classList.add('error-text');
      this.setActions(this.button('Try again', () => { this.status.classList.remove('error-text'); this.upload(); }),
        this.button('Remove', () => this.remove()));
    }

    // -- the job

    showJob(job) {
      this.job = job;
      this.el.dataset.jobId = job.job_id;
      this.setBadge(job.state);
      const parts = [];
      if (Number(job.video_size_bytes)) parts.push(`Video ${formatBytes(job.video_size_bytes)}`);
      if (Number(job.mp3_size_bytes)) parts.push(`MP3 ${formatBytes(job.mp3_size_bytes)}`);
      if (job.options) parts.push(describeOptions(job.options));
      const date = formatDate(job.create_time);
      if (date) parts.push(date);
      this.meta.textContent = parts.join(' · ');
      this.status.classList.toggle('error-text', job.state === 'JOB_STATE_FAILED');
      if (job.state === 'JOB_STATE_DONE') updateEmpty(); // "Download all" may show now
      const del = this.button('Delete', () => this.delete(), 'btn btn-small btn-danger');
      switch (job.state) {
        case 'JOB_STATE_QUEUED':
          this.bar.hidden = false;
          this.bar.removeAttribute('value'); // indeterminate: waiting for a converter
          this.status.textContent = 'Uploaded. Waiting for a converter…';
          this.setActions(del);
          break;
        case 'JOB_STATE_PROCESSING':
          this.bar.hidden = false;
          this.bar.value = job.progress || 0;
          this.status.textContent = `Converting… ${job.progress || 0}%`;
          this.setActions(del);
          break;
        case 'JOB_STATE_DONE':
          this.bar.hidden = true;
          this.status.textContent = isSplit(job) ? `Done. ${job.files.length} MP3s, one per chapter.`
            : 'Done. Your MP3 is ready.';
          if (!this.mp3Url) this.setActions(this.button('Get MP3', () => this.loadMp3()), del);
          break;
        case 'JOB_STATE_FAILED':
          this.bar.hidden = true;
          this.status.textContent = `Conversion failed: ${job.error || 'no reason given'}`;
          this.setActions(del);
          break;
        default:
          this.status.textContent = '';
      }
    }

    async startFollowing() {
      this.follow?.abort();
      const ctl = new AbortController();
      this.follow = ctl;
      try {
        await followJob(this.job.job_id, (job, err) => {
          if (job) this.showJob(job);
          else this.status.textContent = `${describeError(err)} Still trying…`;
        }, ctl.signal);
        loadUsage(); // its MP3 is held and its minutes counted now
        if (this.job.state === 'JOB_STATE_DONE') await this.loadMp3();
      } catch (e) {
        if (!ctl.signal.aborted && !(e instanceof ApiError && e.status === 401)) {
          this.status.textContent = describeError(e);
        }
      }
    }

    // The MP3 needs the Authorization header, so it is fetched into a Blob
    // and played/downloaded through a blob: URL (no token in any URL).
    async loadMp3(track = 0) {
      if (this.mp3Url) return;
      if (isSplit(this.job) && !track) { this.showTracks(); return; }
      this.status.textContent = 'Fetching the MP3…';
      const path = track ? `/mp3s/${track}` : '/mp3';
      try {
        const res = await api('GET', `/v1/jobs/${encodeURIComponent(this.job.job_id)}${path}`, { raw: true });
        const blob = new Blob([await res.blob()], { type: 'audio/mpeg' });
        this.mp3Url = URL.createObjectURL(blob);
      } catch (e) {
        if (!(e instanceof ApiError && e.status === 401)) this.status.textContent = describeError(e);
        return;
      }
      const file = (this.job.files || []).find((f) => f.track === track);
      const name = file ? file.name : mp3Name(this.job.filename || this.name);
      const audio = h('audio', { controls: true, preload: 'metadata', src: this.mp3Url, 'aria-label': `Play ${name}` });
      this.player.replaceChildren(audio);
      this.status.textContent = file ? `Playing ${file.chapter_title || name}.` : 'Done. Your MP3 is ready.';
      const link = h('a', { class: 'btn btn-small btn-primary', href: this.mp3Url, download: name, text: 'Download MP3' });
      link.setAttribute('aria-label', `Download ${name}`);
      if (file) {
        this.setActions(link, this.button('All chapters', () => this.showTracks()),
          this.button('Delete', () => this.delete(), 'btn btn-small btn-danger'));
      } else this.setActions(link, this.button('Delete', () => this.delete(), 'btn btn-small btn-danger'));
    }

    // A job split by chapter: a button per chapter (played and saved like a
    // single MP3) and its MP3s as one ZIP.
    showTracks() {
      if (this.mp3Url) URL.revokeObjectURL(this.mp3Url);
      this.mp3Url = '';
      this.player.replaceChildren();
      this.status.textContent = `Done. ${this.job.files.length} MP3s, one per chapter.`;
      const tracks = this.job.files.map((f) => this.button(`${f.track}. ${f.chapter_title || f.name}`,
        () => this.loadMp3(f.track)));
      const zip = this.button('Download ZIP', () => this.saveZip(), 'btn btn-small btn-primary');
      this.setActions(zip, ...tracks, this.button('Delete', () => this.delete(), 'btn btn-small btn-danger'));
    }

    async saveZip() {
      this.status.textContent = 'Fetching the ZIP…';
      try {
        const res = await api('GET', `/v1/jobs/${encodeURIComponent(this.job.job_id)}/mp3`, { raw: true });
        saveBlob(await res.blob(), mp3Name(this.job.filename || this.name).replace(/\.mp3$/, '.zip'));
        this.status.textContent = `Done. ${this.job.files.length} MP3s, one per chapter.`;
      } catch (e) {
        if (!(e instanceof ApiError && e.status === 401)) this.status.textContent = describeError(e);
      }
    }

    async delete() {
      this.follow?.abort();
      this.status.classList.remove('error-text');
      this.status.textContent = 'Deleting…';
      try {
        await api('DELETE', `/v1/jobs/${encodeURIComponent(this.job.job_id)}`);
      } catch (e) {
        if (e instanceof ApiError && e.status === 401) return;
        if (!(e instanceof ApiError && e.reason === 'JOB_NOT_FOUND')) {
          // A 404 without a reason: this server has no DeleteJob yet.
          this.status.textContent = e instanceof ApiError && e.status === 404 && !e.reason
            ? 'This server cannot delete files yet.' : `Not deleted: ${describeError(e)}`;
          this.status.classList.add('error-text');
          if (!isFinal(this.job)) this.startFollowing();
          return;
        }
      }
      this.remove();
    }

    remove() {
      this.dispose();
      this.el.remove();
      const i = rows.indexOf(this);
      if (i >= 0) rows.splice(i, 1);
      updateEmpty();
      ui.jobs.querySelector('button, a')?.focus?.({ preventScroll: true });
    }

    dispose() {
      this.xhr?.abort();
      if (this.tus) { this.tus.abort(false); this.tus = null; }
      this.follow?.abort();
      if (this.mp3Url) URL.revokeObjectURL(this.mp3Url);
      this.mp3Url = '';
    }
  }

  const isSplit = (job) => (job?.files || []).length > 1;
  const doneIds = () => rows.filter((r) => r.job?.state === 'JOB_STATE_DONE' && (r.job.files || []).length)
    .map((r) => r.job.job_id);

  function updateEmpty() {
    ui.jobsEmpty.hidden = rows.length > 0;
    ui.downloadAll.hidden = doneIds().length < 2;
  }

  // "Download all": every DONE file on the page as one ZIP (GET /v1/jobs:zip,
  // streamed by the server).
  async function downloadAll() {
    const ids = doneIds();
    if (!ids.length) return;
    const params = new URLSearchParams(ids.map((id) => ['job_ids', id]));
    ui.downloadAll.disabled = true;
    showNotice(`Fetching ${ids.length} files as one ZIP…`, 'info');
    try {
      const res = await api('GET', `/v1/jobs:zip?${params}`, { raw: true });
      saveBlob(await res.blob(), 'video2mp3.zip');
      showNotice('');
    } catch (e) {
      if (!(e instanceof ApiError && e.status === 401)) showNotice(`Could not download the ZIP. ${describeError(e)}`);
    } finally {
      ui.downloadAll.disabled = false;
    }
  }

  // ------------------------------------------------------------ options

  function fillOptions() {
    for (const b of BITRATES) {
      ui.bitrate.append(h('option', { value: String(b), text: `${b} kbps`, selected: b === DEFAULT_BITRATE }));
    }
    ui.vbr.append(h('option', { value: '', text: 'Off (constant bitrate)' }));
    for (let q = 0; q <= 9; q += 1) {
      const note = q === 0 ? ' (best, largest)' : q === 9 ? ' (smallest)' : '';
      ui.vbr.append(h('option', { value: String(q), text: `Quality ${q}${note}` }));
    }
    ui.vbr.addEventListener('change', () => { ui.bitrate.disabled = ui.vbr.value !== ''; });
    ui.loudness.append(h('option', { value: '', text: 'As it is' }));
    for (const [lufs, use] of LOUDNESS_TARGETS) {
      ui.loudness.append(h('option', { value: String(lufs), text: `${lufs} LUFS (${use})` }));
    }
    for (const input of [ui.start, ui.end]) {
      input.addEventListener('input', () => { input.setCustomValidity(''); });
    }
  }

  // Why the trim fields cannot be used (marked on the field), or '' when they can.
  function trimProblem() {
    const start = parseTime(ui.start.value);
    const end = parseTime(ui.end.value);
    for (const [input, value] of [[ui.start, start], [ui.end, end]]) {
      if (Number.isNaN(value)) {
        input.setCustomValidity('not a time');
        return `${input === ui.start ? 'Start' : 'End'} is not a time: write it as h:mm:ss.mmm, m:ss or seconds.`;
      }
    }
    if (end != null && end <= (start || 0)) {
      ui.end.setCustomValidity('before start');
      return 'End must be after start.';
    }
    return '';
  }

  // Query parameters of POST /v1/videos.
  function currentOptions() {
    const o = ui.vbr.value !== '' ? { vbr_quality: ui.vbr.value } : { bitrate_kbps: ui.bitrate.value };
    o.channels = ui.mono.checked ? '1' : '2';
    const start = parseTime(ui.start.value);
    const end = parseTime(ui.end.value);
    if (start) o.start_ms = String(start);
    if (end != null) o.end_ms = String(end);
    if (ui.loudness.value !== '') o.loudness_lufs = ui.loudness.value;
    if (ui.coverArt.checked) o.cover_art = 'true';
    if (ui.splitChapters.checked) o.split_chapters = 'true';
    return o;
  }

  // A request_id (UUID) per upload: creating it twice gives the same upload.
  function newRequestId() {
    if (window.crypto?.randomUUID) return window.crypto.randomUUID();
    const b = window.crypto.getRandomValues(new Uint8Array(16));
    b[6] = (b[6] & 0x0f) | 0x40; b[8] = (b[8] & 0x3f) | 0x80;
    const hex = [...b].map((x) => x.toString(16).padStart(2, '0')).join('');
    return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
  }

  const wireOptions = (o) => ({ bitrate_kbps: Number(o.bitrate_kbps) || 0, vbr_quality: o.vbr_quality, channels: o.channels,
    start_ms: o.start_ms, end_ms: o.end_ms, loudness_lufs: o.loudness_lufs,
    cover_art: o.cover_art, split_chapters: o.split_chapters });

  // ------------------------------------------------------------ files in

  let trimNoticeShown = false;

  function addFiles(files) {
    const problem = trimProblem();
    if (problem) {
      showNotice(problem, 'error');
      trimNoticeShown = true;
      return;
    }
    if (trimNoticeShown) showNotice('');  // fixed since
    trimNoticeShown = false;
    for (const file of files) {
      const row = new Row({ file });
      rows.unshift(row);
      ui.jobs.prepend(row.el);
      row.upload();
    }
    updateEmpty();
  }

  function setUpDropZone() {
    ui.fileInput.addEventListener('change', () => {
      addFiles([...ui.fileInput.files]);
      ui.fileInput.value = ''; // the same file can be picked again
    });
    const zone = ui.dropZone;
    for (const type of ['dragenter', 'dragover']) {
      zone.addEventListener(type, (e) => { e.preventDefault(); zone.classList.add('drag-over'); });
    }
    for (const type of ['dragleave', 'dragend']) zone.addEventListener(type, () => zone.classList.remove('drag-over'));
    zone.addEventListener('drop', (e) => {
      e.preventDefault();
      zone.classList.remove('drag-over');
      addFiles([...(e.dataTransfer?.files || [])]);
    });
    // A file dropped next to the zone must not replace the page.
    window.addEventListener('dragover', (e) => e.preventDefault());
    window.addEventListener('drop', (e) => e.preventDefault());
  }

  // ------------------------------------------------------------ earlier jobs

  async function loadJobs(more = false) {
    const params = new URLSearchParams({ page_size: '20' });
    if (more && nextPageToken) params.set('page_token', nextPageToken);
    let page;
    try {
      page = await api('GET', `/v1/jobs?${params}`);
    } catch (e) {
      if (!(e instanceof ApiError && e.status === 401)) showNotice(`Could not load your files. ${describeError(e)}`);
      return;
    }
    showNotice('');
    const known = new Set(rows.map((r) => r.job?.job_id).filter(Boolean));
    for (const job of page.jobs || []) {
      if (known.has(job.job_id)) {
        const row = rows.find((r) => r.job?.job_id === job.job_id);
        if (!row.follow || row.follow.signal.aborted) row.showJob(job);
        continue;
      }
      const row = new Row({ job });
      rows.push(row);
      ui.jobs.append(row.el);
      if (!isFinal(job)) row.startFollowing();
    }
    nextPageToken = page.next_page_token || '';
    ui.more.hidden = !nextPageToken;
    updateEmpty();
    loadUsage();
  }

  // ------------------------------------------------------------ usage and quotas

  function formatMinutes(m) {
    m = Number(m) || 0;
    return m >= 120 ? `${(m / 60).toFixed(m % 60 ? 1 : 0)} h` : `${Math.round(m * 10) / 10} min`;
  }

  // One line under the drop zone, refreshed with the list and as jobs end.
  async function loadUsage() {
    let u;
    try {
      u = await api('GET', '/v1/usage');
    } catch {
      ui.usage.textContent = ''; // an older server, or a hiccup: the line is only informative
      return;
    }
    const storage = Number(u.storage_limit_bytes)
      ? `${formatBytes(u.storage_used_bytes)} of ${formatBytes(u.storage_limit_bytes)} stored`
      : `${formatBytes(u.storage_used_bytes)} stored`;
    const minutes = u.minutes_limit
      ? `${formatMinutes(u.minutes_used)} of ${formatMinutes(u.minutes_limit)} converted in the last 24 hours`
      : `${formatMinutes(u.minutes_used)} converted in the last 24 hours`;
    const perJob = `at most ${formatMinutes(u.max_audio_minutes_per_job)} of audio per file`;
    ui.usage.textContent = `${storage} · ${minutes} · ${perJob}`;
  }

  function clearRows() {
    for (const r of rows) r.dispose();
    rows.length = 0;
    ui.jobs.replaceChildren();
    nextPageToken = '';
  }

  // ------------------------------------------------------------ sign in / out

  function showAuth() {
    ui.appView.hidden = true;
    ui.account.hidden = true;
    ui.authView.hidden = false;
    ui.password.value = '';
    ui.email.focus();
  }

  function showApp() {
    ui.authView.hidden = true;
    ui.authError.textContent = '';
    ui.appView.hidden = false;
    ui.account.hidden = false;
    ui.accountEmail.textContent = session.email;
    updateEmpty();
    loadJobs();
  }

  function setSession(token, email, refreshToken = '') {
    session.token = token;
    session.email = email;
    session.refreshToken = refreshToken;
    const saved = { [TOKEN_KEY]: token, [EMAIL_KEY]: email, [REFRESH_KEY]: refreshToken };
    for (const [key, value] of Object.entries(saved)) {
      if (token && value) sessionStorage.setItem(key, value);
      else sessionStorage.removeItem(key);
    }
    scheduleRenewal();
  }

  // ------------------------------------------------------------ renewal

  // The access token's iat and exp (seconds), read from its payload (only
  // the server verifies it).
  function tokenTimes(token) {
    try {
      const part = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
      const claims = JSON.parse(atob(part.padEnd(Math.ceil(part.length / 4) * 4, '=')));
      return { iat: Number(claims.iat) || 0, exp: Number(claims.exp) || 0 };
    } catch {
      return { iat: 0, exp: 0 };
    }
  }

  // When to renew: RENEW_BEFORE_MS before expiry, or a quarter of the lifetime before.
  function renewAt() {
    const { iat, exp } = tokenTimes(session.token);
    if (!exp) return Infinity;
    return exp * 1000 - Math.min(RENEW_BEFORE_MS, ((exp - iat) * 1000) / 4);
  }

  const tokenNeedsRenewal = () => Boolean(session.refreshToken) && Date.now() >= renewAt();

  // Before a call: a token due for renewal is renewed first (the timer may
  // not have run: a sleeping laptop). A session found over ends here.
  async function renewIfDue() {
    if (!tokenNeedsRenewal()) return;
    if (await renewSession() === 'ended') {
      sessionExpired();
      throw new ApiError(401, null);
    }
  }

  function scheduleRenewal(delay = null) {
    clearTimeout(renewTimer);
    renewTimer = 0;
    if (!session.token || !session.refreshToken) return;
    const wait = delay ?? Math.max(0, renewAt() - Date.now());
    if (!Number.isFinite(wait)) return;
    renewTimer = setTimeout(async () => {
      const outcome = await renewSession();
      if (outcome === 'ended') sessionExpired();
      else if (outcome === 'unreachable') scheduleRenewal(RENEW_RETRY_MS);
    }, Math.min(wait, 2 ** 31 - 1));
  }

  // Trade the refresh token for new tokens: 'ok', 'ended' (the session is
  // over: log in again) or 'unreachable' (try again later). One at a time:
  // a refresh token works once, so a second request would end the session.
  function renewSession() {
    if (!session.refreshToken) return Promise.resolve('ended');
    if (!renewing) renewing = doRenew().finally(() => { renewing = null; });
    return renewing;
  }

  async function doRenew() {
    const sent = session.refreshToken;
    let res;
    try {
      res = await fetch('/v1/sessions:refresh', {
        method: 'POST', headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({ refresh_token: sent }),
      });
    } catch {
      return 'unreachable';
    }
    const body = parseJson(await res.text().catch(() => ''));
    if (session.refreshToken !== sent) return session.token ? 'ok' : 'ended'; // logged out meanwhile
    if (res.ok && body?.access_token) {
      setSession(body.access_token, session.email, body.refresh_token);
      return 'ok';
    }
    if (res.status === 401 || res.status === 400) {
      session.endedBecause = new ApiError(res.status, body).reason;
      return 'ended';
    }
    return 'unreachable';
  }

  // After a 401: renew once and call `retry`; `unreachable` if the server
  // cannot be asked; log out if the session is over.
  function retryAfterRenewal(renewed, retry, unreachable) {
    if (renewed) { sessionExpired(); return; }
    renewSession().then((outcome) => {
      if (outcome === 'ok') retry();
      else if (outcome === 'unreachable') unreachable();
      else sessionExpired();
    });
  }

  function logout(message, kind = 'info') {
    const email = session.email;
    clearRows();
    setSession('', '');
    showNotice(message, kind);
    showAuth();
    ui.email.value = email;
  }

  // The Log out button: the server revokes the session (its refresh token
  // and, within seconds, its access tokens), then the page forgets it.
  async function endSession() {
    const token = session.refreshToken;
    let told = true;
    if (token) {
      const ctl = new AbortController();
      const timer = setTimeout(() => ctl.abort(), 5000);
      try {
        const res = await fetch('/v1/sessions:revoke', {
          method: 'POST', headers: { 'Content-Type': 'application/json' }, signal: ctl.signal, keepalive: true,
          body: JSON.stringify({ refresh_token: token }),
        });
        told = res.ok;
      } catch {
        told = false;
      } finally {
        clearTimeout(timer);
      }
    }
    logout(told ? 'You have logged out.'
      : 'You have logged out on this device. The server could not be reached to end the session; it ends by itself once unused.');
  }

  const ENDED_MESSAGES = {
    REFRESH_TOKEN_REUSED: 'For your safety this session was ended: its renewal was used twice (a copied tab?). Please log in again.',
    SESSION_REVOKED: 'This session was ended (logged out elsewhere). Please log in again.',
  };

  // A 401 that renewing did not cure: the session expired or was revoked.
  function sessionExpired() {
    if (!session.token) return;
    const message = ENDED_MESSAGES[session.endedBecause] || 'Your session has expired. Please log in again.';
    session.endedBecause = '';
    logout(message, 'error');
    ui.password.focus();
  }

  async function signIn(create) {
    const email = ui.email.value.trim();
    const password = ui.password.value;
    ui.authError.textContent = '';
    if (!email || !password) {
      ui.authError.textContent = 'Enter your email and a password.';
      (email ? ui.password : ui.email).focus();
      return;
    }
    ui.login.disabled = ui.signup.disabled = true;
    try {
      if (create) await api('POST', '/v1/users', { body: { email, password }, authed: false });
      const res = await api('POST', '/v1/login', { body: { email, password }, authed: false });
      setSession(res.access_token, email, res.refresh_token || '');
      showNotice('');
      showApp();
    } catch (e) {
      ui.authError.textContent = describeError(e);
      ui.password.focus();
    } finally {
      ui.login.disabled = ui.signup.disabled = false;
    }
  }

  function start() {
    fillOptions();
    setUpDropZone();
    ui.authForm.addEventListener('submit', (e) => { e.preventDefault(); signIn(false); });
    ui.signup.addEventListener('click', () => signIn(true));
    ui.logout.addEventListener('click', () => endSession());
    ui.more.addEventListener('click', () => loadJobs(true));
    ui.refresh.addEventListener('click', () => loadJobs());
    ui.downloadAll.addEventListener('click', () => downloadAll());
    if (session.token) {
      scheduleRenewal(); // a reloaded page renews at once if its token is due
      showApp();
    } else showAuth();
  }

  start();
})();
