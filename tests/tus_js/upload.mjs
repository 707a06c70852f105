// Upload a file to a tus endpoint with tus-js-client, as a browser or Node app would.
//
//   node upload.mjs ENDPOINT FILE [OPTIONS_JSON]
//
// OPTIONS_JSON (all optional): {"metadata": {...}, "chunkSize": N, "headers": {...},
//   "overridePatchMethod": true to send PATCH as POST + X-HTTP-Method-Override,
//   "uploadUrl": URL to resume instead of creating, "stopAfterChunks": N to abort
//   after N chunks, as an interrupted client would}.
// Prints the upload URL on stdout and exits 0 when the upload finished, or when it
// stopped after stopAfterChunks; on an error prints it on stderr and exits 1.
import { createReadStream } from 'node:fs'
import { Upload } from 'tus-js-client'

const [endpoint, file, optionsJson = '{}'] = process.argv.slice(2)
if (!endpoint || !file) {
  console.error('usage: node upload.mjs ENDPOINT FILE [OPTIONS_JSON]')
  process.exit(2)
}
const options = JSON.parse(optionsJson)

let chunks = 0
const upload = new Upload(createReadStream(file), {
  endpoint,
  uploadUrl: options.uploadUrl ?? null,
  metadata: options.metadata ?? {},
  headers: options.headers ?? {},
  chunkSize: options.chunkSize ?? Number.POSITIVE_INFINITY,
  overridePatchMethod: options.overridePatchMethod ?? false,
  retryDelays: [0, 250, 1000],
  onChunkComplete() {
    chunks += 1
    if (options.stopAfterChunks && chunks >= options.stopAfterChunks) {
      upload.abort().then(() => {
        console.log(upload.url)
        process.exit(0)
      })
    }
  },
  onSuccess() {
    console.log(upload.url)
    process.exit(0)
  },
  onError(error) {
    console.error(String(error))
    process.exit(1)
  },
})
upload.start()
